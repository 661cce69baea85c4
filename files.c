// The files nano reads and writes: whole files, streams of lines, the encodings it refuses, write
// errors, and the lock that keeps two runs from writing one results file.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nano.h"

int open_regular(const char *path, struct stat *sb) {
    int fd = open(path, O_RDONLY | O_NONBLOCK);  // a FIFO must not hang the open
    if (fd < 0) return -1;
    int bad = fstat(fd, sb) != 0 ? EIO : S_ISDIR(sb->st_mode) ? EISDIR : !S_ISREG(sb->st_mode) ? EINVAL : 0;
    if (bad) {
        close(fd);
        errno = bad;
        return -1;
    }
    return fd;
}

const char *file_error(const char *path) {
    if (errno == ENOENT && is_link(path)) return "a symbolic link to a file that does not exist";
    if (errno == ELOOP) return "a loop of symbolic links";
    if (errno == EINVAL) return "not a regular file";
    return strerror(errno);
}

char *read_file(const char *path, size_t max, size_t *len) {
    struct stat sb;
    int fd = open_regular(path, &sb);
    if (fd < 0) return NULL;
    if ((uint64_t)sb.st_size > max) {
        close(fd);
        errno = EFBIG;
        return NULL;
    }
    // Read to the end rather than trusting st_size: the file may change while it is read.
    size_t cap = (size_t)sb.st_size + 1, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n + 1 == cap) {
            if (n >= max) break;
            buf = realloc(buf, cap *= 2);
            if (!buf) fatal("%s: out of memory reading it", path);
        }
        ssize_t got = read(fd, buf + n, cap - 1 - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            int e = errno;
            free(buf);
            close(fd);
            errno = e;
            return NULL;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    close(fd);
    buf[n] = 0;
    *len = n;
    return buf;
}

int is_link(const char *path) {
    struct stat sb;
    return lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode);
}

char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

const char *text_encoding_problem(const void *head, size_t n) {
    const unsigned char *b = head;
    if (n >= 2 && ((b[0] == 0xFF && b[1] == 0xFE) || (b[0] == 0xFE && b[1] == 0xFF)))
        return "is UTF-16 (it starts with a UTF-16 byte order mark); nano reads UTF-8: convert it, e.g. with iconv -f UTF-16 -t UTF-8";
    // UTF-16 without a byte order mark: ASCII text then has a NUL in every other byte.
    if (n >= 4 && ((b[0] && !b[1] && b[2] && !b[3]) || (!b[0] && b[1] && !b[2] && b[3])))
        return "looks like UTF-16 (a NUL in every other byte); nano reads UTF-8: convert it, e.g. with iconv -f UTF-16 -t UTF-8";
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// Lines

int lines_open(LineReader *r, const char *path) {
    memset(r, 0, sizeof *r);
    struct stat sb;
    int fd = open_regular(path, &sb);
    if (fd < 0) return -1;
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    r->f = fdopen(fd, "rb");
    if (!r->f) {
        close(fd);
        return -1;
    }
    return 0;
}

void lines_from(LineReader *r, FILE *f) {
    memset(r, 0, sizeof *r);
    r->f = f;
}

void lines_close(LineReader *r) {
    if (r->f && r->f != stdin) fclose(r->f);
    free(r->buf);
    memset(r, 0, sizeof *r);
}

static void line_put(LineReader *r, int c) {
    if (r->len + 2 > r->cap) {
        r->cap = r->cap ? r->cap * 2 : 256;
        r->buf = realloc(r->buf, r->cap);
        if (!r->buf) fatal("out of memory reading a line of %zu bytes", r->len);
    }
    r->buf[r->len++] = (char)c;
}

int line_next(LineReader *r) {
    FILE *f = r->f;
    r->start = r->pos;
    r->len = 0;
    r->ended = 0;
    int c;
    while ((c = getc_unlocked(f)) != EOF) {
        r->pos++;
        if (c == '\n') {
            r->ended = 1;
            break;
        }
        if (c == '\r') {  // \r\n, or an old Mac line end on its own
            int d = getc_unlocked(f);
            if (d == '\n') r->pos++;
            else if (d != EOF) ungetc(d, f);
            r->ended = 1;
            break;
        }
        line_put(r, c);
    }
    if (!r->ended && r->len == 0) return 0;
    r->no++;
    line_put(r, 0);
    r->len--;
    // An editor's UTF-8 byte order mark is not part of the first line.
    if (r->no == 1 && r->len >= 3 && !memcmp(r->buf, "\xEF\xBB\xBF", 3)) {
        memmove(r->buf, r->buf + 3, r->len - 2);
        r->len -= 3;
    }
    return 1;
}

long line_nul(const LineReader *r) {
    const char *z = memchr(r->buf, 0, r->len);
    return z ? (long)(z - r->buf) : -1;
}

uint64_t hash64(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

// ---------------------------------------------------------------------------------------------
// Output

void out_check(FILE *f, const char *name) {
    errno = 0;
    if (fflush(f) != 0 || ferror(f)) fatal("%s: write failed: %s", name, strerror(errno ? errno : EIO));
}

int lock_output(int fd) { return flock(fd, LOCK_EX | LOCK_NB); }
