// Line input for the chat (lineedit.c). On a terminal, a small editor: cursor keys, Home/End,
// Backspace/Delete, Ctrl-U/Ctrl-K, history of the session's lines (Up/Down), and multi-line input —
// a line ending in '\' continues on the next, and a bracketed paste is taken whole. Elsewhere, lines
// are read as they come (a trailing '\' still continues).
#ifndef NANO_LINEEDIT_H
#define NANO_LINEEDIT_H

typedef struct {
    int tty;          // stdin and stdout are terminals: edit in raw mode
    char **history;   // earlier lines, oldest first
    int n_history;
} LineEdit;

void line_edit_init(LineEdit *r);
// One input line (continuations joined with '\n'), malloc'd; NULL at end of input, on Ctrl-D at an empty
// line or on Ctrl-C. prompt is shown on a terminal only.
char *line_edit_read(LineEdit *r, const char *prompt);
void line_edit_history(LineEdit *r, const char *line);
void line_edit_free(LineEdit *r);

#endif
