// The chat's line input: a minimal single-line editor in the terminal's raw mode (VT100 escapes only),
// and plain reads when stdin or stdout is not a terminal. See lineedit.h.
#include "lineedit.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "nano.h"

#define PASTE_ON "\x1b[?2004h"  // ask the terminal to bracket pastes in ESC[200~ ... ESC[201~
#define PASTE_OFF "\x1b[?2004l"
#define MORE_PROMPT "\xe2\x80\xa6 "  // "… " before a continuation line

static struct termios saved;
static int raw_on;

static void raw_off(void) {
    if (!raw_on) return;
    if (write(1, PASTE_OFF, sizeof PASTE_OFF - 1)) {}
    tcsetattr(0, TCSADRAIN, &saved);
    raw_on = 0;
}

// No echo, no line discipline, Ctrl-C as a byte; output processing stays, so "\n" still returns the
// carriage. TCSADRAIN, not TCSAFLUSH: keys typed during the reply are kept.
static int raw_enable(void) {
    static int registered;
    if (tcgetattr(0, &saved) != 0) return -1;
    struct termios t = saved;
    t.c_iflag &= ~(tcflag_t)(BRKINT | ICRNL | INPCK | ISTRIP | IXON);
    t.c_lflag &= ~(tcflag_t)(ECHO | ICANON | IEXTEN | ISIG);
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    if (tcsetattr(0, TCSADRAIN, &t) != 0) return -1;
    raw_on = 1;
    if (!registered) registered = !atexit(raw_off);  // a fatal error must not leave the terminal raw
    if (write(1, PASTE_ON, sizeof PASTE_ON - 1)) {}
    return 0;
}

void line_edit_init(LineEdit *r) {
    memset(r, 0, sizeof *r);
    r->tty = isatty(0) && isatty(1);
}

void line_edit_history(LineEdit *r, const char *line) {
    if (!line[0] || (r->n_history && !strcmp(r->history[r->n_history - 1], line))) return;
    r->history = realloc(r->history, (size_t)(r->n_history + 1) * sizeof *r->history);
    if (!r->history) fatal("out of memory");
    r->history[r->n_history++] = strdup(line);
}

void line_edit_free(LineEdit *r) {
    for (int i = 0; i < r->n_history; i++) free(r->history[i]);
    free(r->history);
    raw_off();
}

// A growing string.
typedef struct {
    char *s;
    size_t len, cap;
} Text;

static void text_insert(Text *t, size_t at, const char *s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        t->cap = (t->len + n + 1) * 2;
        t->s = realloc(t->s, t->cap);
        if (!t->s) fatal("out of memory");
    }
    memmove(t->s + at + n, t->s + at, t->len - at);
    memcpy(t->s + at, s, n);
    t->len += n;
    t->s[t->len] = 0;
}

static void text_erase(Text *t, size_t at, size_t n) {
    memmove(t->s + at, t->s + at + n, t->len - at - n);
    t->len -= n;
    t->s[t->len] = 0;
}

static void text_set(Text *t, const char *s) {
    t->len = 0;
    text_insert(t, 0, s, strlen(s));
}

static int is_cont(char c) { return ((unsigned char)c & 0xC0) == 0x80; }  // a UTF-8 continuation byte

static size_t columns(const char *s, size_t n) {  // one column per code point
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += !is_cont(s[i]);
    return c;
}

// Redraws the line: prompt, text, clear to the end, cursor back to its column.
static void refresh(const char *prompt, const Text *line, size_t pos) {
    Text out = {0};
    char move[32];
    text_insert(&out, out.len, "\r", 1);
    text_insert(&out, out.len, prompt, strlen(prompt));
    text_insert(&out, out.len, line->s, line->len);
    size_t col = columns(prompt, strlen(prompt)) + columns(line->s, pos);
    int n = col ? snprintf(move, sizeof move, "\x1b[K\r\x1b[%zuC", col) : snprintf(move, sizeof move, "\x1b[K\r");
    text_insert(&out, out.len, move, (size_t)n);
    if (write(1, out.s, out.len)) {}
    free(out.s);
}

enum { KEY_UP = 1000, KEY_DOWN, KEY_LEFT, KEY_RIGHT, KEY_HOME, KEY_END, KEY_DELETE, KEY_PASTE_START, KEY_PASTE_END, KEY_EOF };

// Bytes from the terminal, with one pushed back: a byte that ends an escape sequence early is a key
// of its own.
static int pushed = -1;

static int read_byte(unsigned char *c) {
    if (pushed >= 0) {
        *c = (unsigned char)pushed;
        pushed = -1;
        return 1;
    }
    return read(0, c, 1) == 1;
}

// Whether a byte arrives within ms: a terminal sends an escape sequence's bytes together, so an ESC
// with nothing after it is the Esc key.
static int byte_soon(int ms) {
    struct pollfd p = {0, POLLIN, 0};
    return poll(&p, 1, ms) > 0;
}

// A byte inside an escape sequence: 1, or 0 for a control byte (pushed back: it ends the sequence, as
// ECMA-48 has it, and is a key of its own), or -1 at the end of input.
static int seq_byte(unsigned char *c) {
    if (!read_byte(c)) return -1;
    if (*c >= 0x20) return 1;
    pushed = *c;
    return 0;
}

// One key: a byte, or a decoded escape sequence (unknown ones, and Alt with a key, read whole and
// returned as 0). Esc alone is 0, and a control byte (Esc, Ctrl-D, Enter, ...) after an ESC or inside
// a sequence is the next key: an Esc or a cut sequence never swallows the keys after it.
static int read_key(void) {
    unsigned char c;
    if (!read_byte(&c)) return KEY_EOF;
    if (c != 27) return c;
    if (!byte_soon(50)) return 0;
    unsigned char seq[16];
    int r = seq_byte(&seq[0]);
    if (r <= 0) return r < 0 ? KEY_EOF : 0;
    if (seq[0] == 'O') {  // ESC O H / ESC O F: Home and End in application mode
        if ((r = seq_byte(&seq[1])) <= 0) return r < 0 ? KEY_EOF : 0;
        return seq[1] == 'H' ? KEY_HOME : seq[1] == 'F' ? KEY_END : 0;
    }
    if (seq[0] != '[') return 0;  // Alt and a key: ignored
    size_t n = 0;  // parameters, then the final byte (0x40-0x7e)
    do {
        if ((r = seq_byte(&seq[n])) <= 0) return r < 0 ? KEY_EOF : 0;
    } while (!(seq[n] >= 0x40 && seq[n] <= 0x7e) && ++n < sizeof seq - 1);
    seq[n + 1] = 0;
    switch (seq[n]) {
    case 'A': return KEY_UP;
    case 'B': return KEY_DOWN;
    case 'C': return KEY_RIGHT;
    case 'D': return KEY_LEFT;
    case 'H': return KEY_HOME;
    case 'F': return KEY_END;
    case '~': {
        int p = atoi((const char *)seq);
        return p == 1 || p == 7 ? KEY_HOME : p == 4 || p == 8 ? KEY_END : p == 3 ? KEY_DELETE : p == 200 ? KEY_PASTE_START
               : p == 201 ? KEY_PASTE_END : 0;
    }
    default: return 0;
    }
}

static char *edit_line(LineEdit *r, const char *prompt) {
    Text done = {0}, line = {0};  // done: earlier lines of a multi-line turn, each ending in '\n'
    text_set(&line, "");
    size_t pos = 0;
    int hist = r->n_history, pasting = 0;
    char *scratch = NULL;  // the line being typed while Up/Down show history
    const char *shown = prompt;
    char *result = NULL;
    fflush(stdout);
    if (raw_enable() != 0) return NULL;
    refresh(shown, &line, pos);
    for (;;) {
        int k = read_key();
        if (k == KEY_EOF || k == 3 || (k == 4 && !line.len && !done.len)) break;  // end of input, Ctrl-C, Ctrl-D
        if (k == '\r' || k == '\n') {
            int more = pasting || (line.len && line.s[line.len - 1] == '\\');
            if (more && !pasting) text_erase(&line, line.len - 1, 1);
            if (!more) refresh(shown, &line, line.len);  // the cursor to the end before leaving the line
            if (write(1, "\r\n", 2)) {}
            text_insert(&done, done.len, line.s, line.len);
            if (!more) {
                result = strdup(done.s);
                break;
            }
            text_insert(&done, done.len, "\n", 1);
            text_set(&line, "");
            pos = 0;
            shown = MORE_PROMPT;
        } else if (k == KEY_PASTE_START || k == KEY_PASTE_END) {
            pasting = k == KEY_PASTE_START;
        } else if (k == 127 || k == 8) {  // Backspace
            size_t p = pos;
            while (p > 0 && is_cont(line.s[--p])) {}
            text_erase(&line, p, pos - p);
            pos = p;
        } else if (k == KEY_DELETE || k == 4) {
            size_t p = pos < line.len ? pos + 1 : pos;
            while (p < line.len && is_cont(line.s[p])) p++;
            text_erase(&line, pos, p - pos);
        } else if (k == KEY_LEFT || k == 2) {
            while (pos > 0 && is_cont(line.s[--pos])) {}
        } else if (k == KEY_RIGHT || k == 6) {
            if (pos < line.len) pos++;
            while (pos < line.len && is_cont(line.s[pos])) pos++;
        } else if (k == KEY_HOME || k == 1) {
            pos = 0;
        } else if (k == KEY_END || k == 5) {
            pos = line.len;
        } else if (k == 21) {  // Ctrl-U: delete to the start
            text_erase(&line, 0, pos);
            pos = 0;
        } else if (k == 11) {  // Ctrl-K: delete to the end
            text_erase(&line, pos, line.len - pos);
        } else if ((k == KEY_UP || k == 16) && hist > 0) {
            if (hist == r->n_history) scratch = strdup(line.s);
            text_set(&line, r->history[--hist]);
            for (char *c = line.s; *c; c++) *c = *c == '\n' ? ' ' : *c;  // one line on screen
            pos = line.len;
        } else if ((k == KEY_DOWN || k == 14) && hist < r->n_history) {
            text_set(&line, ++hist == r->n_history ? scratch : r->history[hist]);
            pos = line.len;
        } else if (k == '\t' || (k >= 32 && k < 256 && k != 127)) {
            char c = (char)k;
            text_insert(&line, pos++, &c, 1);
        }
        refresh(shown, &line, pos);
    }
    if (!result && write(1, "\r\n", 2)) {}
    raw_off();
    free(scratch);
    free(done.s);
    free(line.s);
    return result;
}

// Lines from a pipe or file: a trailing '\' joins the next line on.
static char *read_lines(void) {
    Text t = {0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        const char *nul = memchr(line, 0, (size_t)n);
        if (nul) {  // the rest of the line would be lost silently: the turn is refused instead
            fprintf(stderr, "nano: NUL byte at byte offset %ld of the line; nothing was sent\n", (long)(nul - line));
            t.len = 0;
            n = 0;
        }
        int more = n > 0 && line[n - 1] == '\\';
        text_insert(&t, t.len, line, (size_t)(n - more));
        if (!more) break;
        text_insert(&t, t.len, "\n", 1);
    }
    free(line);
    if (n < 0 && !t.len) {
        free(t.s);
        return NULL;
    }
    return t.s ? t.s : strdup("");
}

char *line_edit_read(LineEdit *r, const char *prompt) { return r->tty ? edit_line(r, prompt) : read_lines(); }
