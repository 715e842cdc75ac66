/* The umbrella header: the engine and its events. Adapters have their own headers. */
#ifndef STAGECOACH_H
#define STAGECOACH_H

#define SC_VERSION_MAJOR  0
#define SC_VERSION_MINOR  1
#define SC_VERSION_PATCH  0
#define SC_VERSION_STRING "0.1.0"

#include <stagecoach/error.h>
#include <stagecoach/events.h>
#include <stagecoach/engine.h>

#endif
