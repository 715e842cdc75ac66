/* Strict JSON for the `stagecoach` command: cJSON builds the tree, after a check of the text for
 * what cJSON would accept and we refuse, and a value's line and column are found from the text
 * when a mistake needs them. Internal to the `stagecoach` command. */
#ifndef STAGECOACH_CLI_JSONPOS_H
#define STAGECOACH_CLI_JSONPOS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* Nesting deeper than this many arrays and objects is refused. */
#define CLI_JSONPOS_MAX_DEPTH 512

/* A position in the text: line from 1, column from 1 counted in bytes. */
typedef struct cli_jsonpos_at {
  uint32_t line, column;
} cli_jsonpos_at;

/* What the positions of one parsed tree are found from: the tree and the text (borrowed). */
typedef struct cli_jsonpos cli_jsonpos;

/* Whether the NUL-terminated s is well-formed UTF-8 (RFC 3629: no overlong form, no surrogate,
 * nothing above U+10FFFF), by the same rule the check applies to JSON text. */
bool cli_utf8_valid(const char *s);

/* Parses text[0 .. len). What it accepts is RFC 8259 and nothing more, with three choices of
 * its own: a duplicate member name in one object is refused (it is almost always a mistake, and
 * cJSON would silently keep both), "\u0000" is refused (cJSON strings end at NUL), and invalid
 * UTF-8 in a string is refused (cJSON would copy it into every event written from the tree). A
 * UTF-8 byte order mark at the start is skipped; columns still count its bytes. Nesting deeper
 * than CLI_JSONPOS_MAX_DEPTH and a number beyond a double are refused too.
 *
 * On success returns 0 with *out the tree (caller frees with cJSON_Delete()) and *positions the
 * means to locate its values (caller frees with cli_jsonpos_free(); it reads text and the tree,
 * so both must outlive it). On failure returns SC_EPARSE (SC_ENOMEM when memory ran out), leaves
 * *out and *positions NULL, and writes into *where and message (NUL-terminated, truncated to
 * message_len) the position and what was expected there, e.g. 3:17 "expected ',' or '}' after
 * an object member". A syntax error is reported before a duplicate name. */
int cli_jsonpos_parse(const char *text, size_t len, cJSON **out, cli_jsonpos **positions,
                      cli_jsonpos_at *where, char *message, size_t message_len);

/* Where the value item starts (its first byte), found by item's index path in the tree and a walk
 * of the text along it. False when item is not in the tree. */
bool cli_jsonpos_value(const cli_jsonpos *positions, const cJSON *item, cli_jsonpos_at *at);

/* Where the name of the object member item starts (its opening quote). False when item is not
 * in the tree or is not an object member. */
bool cli_jsonpos_key(const cli_jsonpos *positions, const cJSON *item, cli_jsonpos_at *at);

/* NULL is a no-op. */
void cli_jsonpos_free(cli_jsonpos *positions);

/* Writes s as a JSON string literal for a message ("de\"ploy"): '"', '\\' and control characters
 * escaped, cut with "..." before the closing quote when it does not fit cap bytes (at least 8;
 * never inside a UTF-8 sequence). Returns out. */
char *cli_jsonpos_quote(char *out, size_t cap, const char *s);

#endif
