// KV cache formats (kv.h, kv.c) on the host: f16 rounding against the compiler's own, each codec's
// bytes and its error bound per element, the wide key channels a checkpoint gets, the Hadamard
// rotation. The GPU suite checks that the GPU writes the same bytes.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"

static uint32_t rng = 2463534242u;
static uint32_t next_u32(void) {  // xorshift32
    rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
    return rng;
}
static float uniform(float lo, float hi) { return lo + (hi - lo) * (float)(next_u32() >> 8) / 16777216.0f; }

// f32_to_f16 (half.h, shared with the GPU) against GCC's _Float16 conversion (IEEE, nearest-even):
// every exponent, ties, subnormals, the overflow edge, infinities.
static void test_f16_rounding(void) {
    int bad = 0, n = 0;
    float edges[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e-8f, 2.98e-8f, 2.9802322e-8f, 5.9604645e-8f,
                     6.1035156e-5f, 6.1e-5f, INFINITY, -INFINITY, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++, n++) {
        _Float16 h = (_Float16)edges[i];
        uint16_t want;
        memcpy(&want, &h, 2);
        bad += f32_to_f16(edges[i]) != want;
    }
    for (int i = 0; i < 2000000; i++, n++) {
        uint32_t u = next_u32();
        if (((u >> 23) & 0xFF) == 0xFF) continue;  // NaN payloads are not specified
        float f;
        memcpy(&f, &u, 4);
        _Float16 h = (_Float16)f;
        uint16_t want;
        memcpy(&want, &h, 2);
        bad += f32_to_f16(f) != want;
    }
    check(bad == 0, "f32_to_f16 = _Float16 on %d values (random bit patterns and edges): %d differ", n, bad);
    check(isnan(f16_to_f32(f32_to_f16(NAN))), "f32_to_f16 keeps NaN");
    int exact = 0;
    for (uint32_t h = 0; h < 0x10000; h++)
        if (((h >> 10) & 0x1F) != 0x1F) exact += f32_to_f16(f16_to_f32((uint16_t)h)) == h;
    check(exact == 0x10000 - 2048, "every finite f16 survives f16 -> f32 -> f16: %d of %d", exact, 0x10000 - 2048);
}

// Bytes per token and kv head at head_dim 128, as the README's table gives them.
static void test_sizes(void) {
    size_t want[KV_N_FORMATS] = {[KV_F32] = 1024, [KV_BF16] = 512, [KV_F16] = 512, [KV_INT8] = 264, [KV_K8V4] = 212, [KV_KV4H] = 144};
    for (int f = 0; f < KV_N_FORMATS; f++) {
        size_t got = kv_bytes_per_token((KVFormat)f, 1, 1, 128, 0), wide = kv_bytes_per_token((KVFormat)f, 1, 1, 128, 4);
        check(got == want[f] && wide == got + 16, "--kv %s: %zu bytes a token and kv head at head_dim 128 (%zu with 4 wide channels)",
              kv_format_name((KVFormat)f), got, wide);
        KVFormat parsed;
        check(kv_format_parse(kv_format_name((KVFormat)f), &parsed) == 0 && parsed == (KVFormat)f, "--kv %s parses back",
              kv_format_name((KVFormat)f));
    }
    KVFormat f;
    check(kv_format_parse("q3", &f) == -1, "--kv q3 is unknown");
    check(kv_check_shape(KV_K8V4, 48) != NULL && kv_check_shape(KV_KV4H, 96) != NULL && kv_check_shape(KV_INT8, 12) != NULL &&
              kv_check_shape(KV_BF16, 6) == NULL && kv_check_shape(KV_KV4H, 64) == NULL,
          "formats refuse head_dims they cannot hold (k8v4 48, kv4h 96, int8 12) and take the rest");
}

// A codec's largest error on element i of row x (D elements): half a quantization step, and the f16
// rounding of the stored scale and minimum.
static float error_bound(KVCodec c, const float *x, int D, int i) {
    int g0 = c == KVC_Q8 ? 0 : i / KV_GROUP * KV_GROUP, n = c == KVC_Q8 ? D : KV_GROUP;
    float lo = INFINITY, hi = -INFINITY;
    for (int k = g0; k < g0 + n; k++) lo = fminf(lo, x[k]), hi = fmaxf(hi, x[k]);
    float amax = fmaxf(-lo, hi);
    switch (c) {
    case KVC_F32: return 0;
    case KVC_BF16: return fabsf(x[i]) / 256;
    case KVC_F16: return fabsf(x[i]) / 2048 + 3e-8f;
    case KVC_Q8: return amax / 127 * 0.5001f;
    case KVC_Q4: return (hi - lo) / 15 * 0.51f + fabsf(lo) / 1024;
    default: return 0;
    }
}

// Every codec on random rows with a few exact zeros and a constant group: decoded within its bound,
// -0 and +0 encoded alike, and the wide channels kept exactly.
static void test_codecs(void) {
    enum { D = 128, ROWS = 200 };
    KVCodec codecs[] = {KVC_F32, KVC_BF16, KVC_F16, KVC_Q8, KVC_Q4, KVC_Q4H};
    const char *names[] = {"f32", "bf16", "f16", "int8", "4-bit", "4-bit Hadamard"};
    int16_t wide[4] = {5, 5 + D / 2, 40, 40 + D / 2};
    for (size_t ci = 0; ci < sizeof codecs / sizeof codecs[0]; ci++) {
        KVCodec c = codecs[ci];
        uint8_t data[4 * D], aux[64], data2[4 * D], aux2[64];
        float x[D], y[D], worst = 0, sq = 0, sq_ref = 0;
        int over = 0, signed_zero_differs = 0, wide_inexact = 0;
        for (int r = 0; r < ROWS; r++) {
            float scale = r % 3 == 0 ? 0.01f : r % 3 == 1 ? 1.0f : 30.0f;
            for (int i = 0; i < D; i++) x[i] = i % 17 == 0 ? 0.0f : uniform(-scale, scale);
            if (r == 7)
                for (int i = 32; i < 64; i++) x[i] = 0.25f;  // a constant group: scale 0
            if (r == 11)
                for (int i = 0; i < D; i++) x[i] = 0;  // an all-zero row: every scale 0
            memset(aux, 0, sizeof aux), memset(aux2, 0, sizeof aux2);
            kv_encode_row(c, x, D, 0, NULL, data, aux);
            kv_decode_row(c, data, aux, D, 0, NULL, y);
            for (int i = 0; i < D; i++) {
                float e = fabsf(y[i] - x[i]);
                sq += e * e, sq_ref += x[i] * x[i];
                if (c != KVC_Q4H && !(e <= error_bound(c, x, D, i))) over++;
                worst = fmaxf(worst, e);
            }
            float neg[D];  // the zeros as -0
            for (int i = 0; i < D; i++) neg[i] = x[i] == 0 ? -0.0f : x[i];
            kv_encode_row(c, neg, D, 0, NULL, data2, aux2);
            if (c != KVC_F32 && c != KVC_BF16 && c != KVC_F16)  // plain codecs store the sign of zero, as they should
                signed_zero_differs += memcmp(data, data2, kv_data_bytes(c, D)) || memcmp(aux, aux2, kv_aux_bytes(c, D, 0));
            // Wide channels: values in the hundreds kept exactly; the rest keep their own bound.
            if (c != KVC_F32 && c != KVC_Q4) {  // (4-bit with a minimum is V's codec: V has no wide channels)
                x[5] = 420.5f, x[5 + D / 2] = -377.25f, x[40] = 0.5f * r, x[40 + D / 2] = -300.0f;
                kv_encode_row(c, x, D, 4, wide, data, aux);
                kv_decode_row(c, data, aux, D, 4, wide, y);
                if (c == KVC_Q4H) {
                    for (int k = 0; k < 4; k++) wide_inexact += !(fabsf(y[wide[k]] - x[wide[k]]) <= 0.4f * scale);  // the rotation spreads the noise
                } else {
                    for (int k = 0; k < 4; k++) wide_inexact += y[wide[k]] != x[wide[k]];
                    float rest[D];
                    memcpy(rest, x, sizeof rest);
                    for (int k = 0; k < 4; k++) rest[wide[k]] = 0;
                    for (int i = 0; i < D; i++)
                        if (i != 5 && i != 40 && i != 5 + D / 2 && i != 40 + D / 2) over += !(fabsf(y[i] - x[i]) <= error_bound(c, rest, D, i));
                }
            }
        }
        double rel_rms = sqrt(sq / sq_ref);
        check(over == 0 && signed_zero_differs == 0 && wide_inexact == 0 && (c != KVC_Q4H || rel_rms < 0.12),
              "KV codec %s: %d rows x %d, elements beyond half a step %d, -0/+0 rows encoded differently %d, wide channels off %d, "
              "largest error %.3g, relative RMS error %.4f",
              names[ci], ROWS, D, over, signed_zero_differs, wide_inexact, worst, rel_rms);
    }
    float v[64], w[64];
    for (int i = 0; i < 64; i++) v[i] = w[i] = uniform(-1, 1);
    kv_hadamard(w, 64);
    double n0 = 0, n1 = 0;
    for (int i = 0; i < 64; i++) n0 += v[i] * v[i], n1 += w[i] * w[i];
    kv_hadamard(w, 64);
    float back = 0;
    for (int i = 0; i < 64; i++) back = fmaxf(back, fabsf(w[i] - v[i]));
    check(fabs(n1 / n0 - 1) < 1e-5 && back < 1e-5f, "Hadamard rotation keeps the norm (%.7f) and is its own inverse (%.1e)", n1 / n0, back);
}

// The wide channels a Qwen2-style checkpoint gets: the pairs of its large k_proj biases, per layer and
// kv head, none for Qwen3 (k_norm after the bias) or for bf16.
static void test_wide_channels(void) {
    enum { L = 2, HKV = 2, D = 64 };
    static float bias[L][HKV * D];
    LayerWeights layers[L];
    memset(layers, 0, sizeof layers);
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < HKV * D; i++) bias[l][i] = uniform(-1.5f, 1.5f);
        layers[l].bk = (Tensor){bias[l], DT_F32, 1, HKV * D};
    }
    bias[0][31] = 300, bias[0][30] = -200, bias[0][D + 2 + D / 2] = 90;  // layer 0: two pairs in head 0, one in head 1
    Model m;
    memset(&m, 0, sizeof m);
    m.layers = layers;
    m.cfg.family = FAMILY_QWEN2, m.cfg.qkv_bias = 1, m.cfg.n_layers = L, m.cfg.n_kv_heads = HKV, m.cfg.head_dim = D;
    int16_t *ch;
    int n = kv_wide_channels(&m, KV_INT8, &ch);
    int16_t want[L * HKV * 4] = {31, 63, 30, 62, 2, 34, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
    check(n == 4 && ch && memcmp(ch, want, sizeof want) == 0, "wide key channels of a Qwen2-style bias: %d a row, %d %d %d %d | %d %d %d %d", n,
          ch ? ch[0] : 0, ch ? ch[1] : 0, ch ? ch[2] : 0, ch ? ch[3] : 0, ch ? ch[4] : 0, ch ? ch[5] : 0, ch ? ch[6] : 0, ch ? ch[7] : 0);
    free(ch);
    check(kv_wide_channels(&m, KV_BF16, &ch) == 0 && !ch, "bf16 keeps no wide channels");
    m.cfg.qk_norm = 1;
    check(kv_wide_channels(&m, KV_INT8, &ch) == 0 && !ch, "Qwen3 (k_norm after the bias) has no wide channels");
    m.cfg.qk_norm = 0;
    bias[0][31] = bias[0][30] = bias[0][D + 2 + D / 2] = 1.0f;
    check(kv_wide_channels(&m, KV_INT8, &ch) == 0 && !ch, "small biases make no wide channels");
}

// The pool's extents: first fit, gaps reused, -1 when no gap fits or every extent is in use; and a
// view's rows are the pool's rows past its base.
static void test_pool(void) {
    KVPool p;
    kv_pool_init(&p, 100, 5);
    int a = kv_pool_take(&p, 30), b = kv_pool_take(&p, 30), c = kv_pool_take(&p, 30);
    check(a == 0 && b == 30 && c == 60 && kv_pool_used(&p) == 90, "pool: extents one after another (%d %d %d)", a, b, c);
    check(kv_pool_take(&p, 11) == -1 && kv_pool_take(&p, 0) == -1, "pool: no gap of 11 in the last 10 positions");
    kv_pool_give(&p, b);
    int d = kv_pool_take(&p, 20), e = kv_pool_take(&p, 10), f = kv_pool_take(&p, 10);
    check(d == 30 && e == 50 && f == 90 && p.n == 5, "pool: the freed gap is taken first, then the end (%d %d %d)", d, e, f);
    check(kv_pool_take(&p, 1) == -1, "pool: every position held, by as many extents as it has room for");
    kv_pool_give(&p, a), kv_pool_give(&p, e);
    int g = kv_pool_take(&p, 31);
    check(g == -1 && kv_pool_used(&p) == 60, "pool: 40 positions free but in gaps of 30 and 10: no extent of 31 (%d)", g);
    kv_pool_give(&p, d);
    check(kv_pool_take(&p, 60) == 0 && p.n == 3, "pool: gaps next to each other make one");
    kv_pool_free(&p);

    Config cfg = {.n_layers = 2, .n_kv_heads = 2, .head_dim = 32};
    KVCache kv;
    kv_init(&kv, &cfg, 50, KV_INT8, 0, NULL);
    KVCache v = kv_view(&kv, 20);
    int same = 1;
    for (int part = 0; part < 2; part++)
        for (int l = 0; l < 2; l++)
            for (int h = 0; h < 2; h++)
                same &= kv_data_at(&v, part, l, h, 7) == kv_data_at(&kv, part, l, h, 27) &&
                        kv_aux_at(&v, part, l, h, 7) == kv_aux_at(&kv, part, l, h, 27);
    check(same, "kv_view: position 7 of a view at 20 is position 27 of the pool, in every plane");
    kv_free(&kv);
}

void test_kv(void) {
    test_pool();
    test_f16_rounding();
    test_sizes();
    test_codecs();
    test_wide_channels();
}
