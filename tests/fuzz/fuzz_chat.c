// libFuzzer target for the chat templates (tokenizer.c): tokenizer_config.json's chat_template and
// bos_token (chat_template_config), the format a template selects (chat_template_select), and rendering
// (chat_render, chat_render_next). The input is tokenizer_config.json (when it starts with '{') or a
// chat_template.jinja text, then optionally a NUL byte and the turns, separated by 0x01 bytes: a turn
// starting with 'S' is a system message, with 'A' an assistant's, else a user's. Checks that every user
// message is rendered whole, and that a chat continued as nano's -i continues it (the reply as
// generated, then chat_render_next) is the chat rendered again whole.
//   make fuzz   (or: make build/fuzz_chat && tests/fuzz/run.sh chat 60)
#include <stdlib.h>
#include <string.h>

#include "nano.h"
#include "tests/fuzz/fuzz.h"

#define MAX_TURNS 16

static JsonFile file = {"tokenizer_config.json", {0}, NULL};
static char *tmpl, *bos;

static char *concat3(const char *a, const char *b, const char *c) {
    size_t na = strlen(a), nb = strlen(b), nc = strlen(c);
    char *s = malloc(na + nb + nc + 1);
    if (!s) abort();
    memcpy(s, a, na);
    memcpy(s + na, b, nb);
    memcpy(s + na + nb, c, nc + 1);
    return s;
}

static void render_checks(const ChatTemplate *ct, char *turns, int flags) {
    ChatMessage msgs[MAX_TURNS + 2];
    int n = 0;
    for (char *p = turns; p && n < MAX_TURNS;) {
        char *end = strchr(p, 1);
        if (end) *end = 0;
        msgs[n].role = *p == 'S' ? "system" : *p == 'A' ? "assistant" : "user";
        msgs[n++].content = *p == 'S' || *p == 'A' ? p + 1 : p;
        p = end ? end + 1 : NULL;
    }
    int thinking = flags % 3 - 1, gen = flags / 3 % 2;
    char *out = chat_render(ct, msgs, n, gen, thinking);
    for (int i = 0; i < n; i++)
        if (!strcmp(msgs[i].role, "user") && !strstr(out, msgs[i].content)) abort();
    free(out);
    // msgs[0..n-2) ends with a user turn; msgs[n-2] is the reply, msgs[n-1] the next user turn.
    if (n < 3 || strcmp(msgs[n - 3].role, "user") || strstr(msgs[n - 2].content, "</think>") ||
        (ct->format == CHAT_QWEN3 && thinking == 0) || (ct->format == CHAT_DEEPSEEK && ct->think_in_prompt))
        return;
    msgs[n - 2].role = "assistant", msgs[n - 1].role = "user";
    char *before = chat_render(ct, msgs, n - 2, 1, thinking), *next = chat_render_next(ct, msgs[n - 1].content, thinking);
    char *continued = concat3(before, msgs[n - 2].content, next), *whole = chat_render(ct, msgs, n, 1, thinking);
    if (strcmp(continued, whole)) abort();
    free(before);
    free(next);
    free(continued);
    free(whole);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fuzz_text(data, size);
    size_t head = strlen(text);
    char *turns = head < size ? text + head + 1 : NULL;
    int flags = size ? data[size - 1] : 0;
    tmpl = bos = NULL;
    fuzz_armed = 1;
    if (setjmp(fuzz_return)) {
        fuzz_check_error("tokenizer_config.json: ");
    } else {
        if (text[0] == '{') {
            if (json_parse(&file.json, text, head) == 0 && json_root(&file.json)->type == JSON_OBJECT) {
                file.root = json_root(&file.json);
                tmpl = chat_template_config(&file, &bos);
            }
        } else {
            tmpl = strdup(text);
        }
        ChatTemplate ct;
        chat_template_select(&ct, tmpl, bos);
        fuzz_armed = 0;
        if (!tmpl != (ct.format == CHAT_NONE)) abort();
        if (turns && ct.format != CHAT_NONE && ct.format != CHAT_UNSUPPORTED) render_checks(&ct, turns, flags);
        chat_template_free(&ct);
    }
    fuzz_armed = 0;
    free(tmpl);
    free(bos);
    json_free(&file.json);
    free(text);
    return 0;
}
