/* A deflate encoder (RFC 1951) for many small messages on many connections.
 *
 * Why not zlib: each message of a WebSocket stream with permessage-deflate (and each
 * write of a gzip'd SSE stream) must end with a sync flush, and zlib builds and
 * compares Huffman trees for every flushed block: about 2.5 microseconds per 140-byte
 * tick at level 1 on the development machine, several times what delivering the tick
 * costs. Its state is also ~6 KB before any window. Blocks this small gain little from
 * dynamic trees, so this encoder writes fixed-code blocks only: greedy LZ77 over a
 * small history (one hash probe per position, matches of 4 to 258 bytes) and the
 * fixed literal/length and distance codes, nothing to build per flush. What it writes
 * is plain deflate: any inflater reads it.
 *
 * State per stream: the history (2 x window bytes) and the hash heads (2 bytes each);
 * nothing else is allocated. Output is byte-aligned after every call (a sync flush
 * ends each one), so no bits carry over between calls.
 */
#ifndef TORNADOSE_TDEFLATE_H
#define TORNADOSE_TDEFLATE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tdeflate.h writes 32-bit words little-endian: big-endian machines use the Python twin"
#endif

typedef struct {
    uint8_t *hist;      /* 2 * wsize bytes: the window, then the input being encoded */
    uint16_t *head;     /* per hash: 1 + position in hist of the newest 4-byte prefix */
    uint32_t wsize;     /* the window: the largest distance a match may reach back */
    uint32_t hbits;     /* log2 of the number of hash heads */
    uint32_t have;      /* bytes in hist */
} td_state;

typedef struct {
    uint8_t *out;
    uint64_t bits;
    int nbits;
} td_writer;

/* Fixed codes, bit-reversed (deflate sends Huffman codes most significant bit first
 * into a least-significant-first bit stream). */
static uint16_t td_lit_code[288];
static uint8_t td_lit_len[288];
/* Length 3..258 -> its code and extra bits as one value, and the bit count. */
static uint32_t td_len_bits[259];
static uint8_t td_len_n[259];
static uint8_t td_dist_rev[30];  /* distance code 0..29, 5 bits, reversed */
static int td_ready = 0;

static uint32_t td_reverse(uint32_t code, int len) {
    uint32_t r = 0;
    for (int i = 0; i < len; i++) {
        r = (r << 1) | (code & 1);
        code >>= 1;
    }
    return r;
}

static void td_init_tables(void) {
    if (td_ready)
        return;
    for (int v = 0; v < 288; v++) {
        uint32_t code;
        int len;
        if (v < 144) { code = 0x30 + v; len = 8; }
        else if (v < 256) { code = 0x190 + (v - 144); len = 9; }
        else if (v < 280) { code = v - 256; len = 7; }
        else { code = 0xC0 + (v - 280); len = 8; }
        td_lit_code[v] = (uint16_t)td_reverse(code, len);
        td_lit_len[v] = (uint8_t)len;
    }
    for (int length = 3; length <= 258; length++) {
        int x = length - 3, sym, extra = 0, value = 0;
        if (length == 258) {
            sym = 285;
        } else if (x < 8) {
            sym = 257 + x;
        } else {
            int nb = 31 - __builtin_clz((unsigned)x);
            sym = 257 + 4 * (nb - 1) + ((x >> (nb - 2)) & 3);
            extra = nb - 2;
            value = x & ((1 << extra) - 1);
        }
        td_len_bits[length] = td_lit_code[sym] | ((uint32_t)value << td_lit_len[sym]);
        td_len_n[length] = (uint8_t)(td_lit_len[sym] + extra);
    }
    for (int d = 0; d < 30; d++)
        td_dist_rev[d] = (uint8_t)td_reverse((uint32_t)d, 5);
    td_ready = 1;
}

/* Bytes td_compress may write for n bytes of input: 9 bits per literal at worst. */
static size_t td_bound(size_t n) {
    return n + (n >> 3) + 16;
}

/* A window of 2^wbits bytes, wbits 9..14 (positions are 16-bit and the history holds
 * two windows), and 2^hbits hash heads, hbits 8..16. Returns 0, or -1 when out of
 * memory. */
static int td_open(td_state *s, int wbits, int hbits) {
    td_init_tables();
    s->wsize = 1u << wbits;
    s->hbits = (uint32_t)hbits;
    s->have = 0;
    s->hist = (uint8_t *)malloc(2 * (size_t)s->wsize);
    s->head = (uint16_t *)calloc((size_t)1 << hbits, sizeof(uint16_t));
    if (s->hist == NULL || s->head == NULL) {
        free(s->hist);
        free(s->head);
        s->hist = NULL;
        s->head = NULL;
        return -1;
    }
    return 0;
}

static void td_close(td_state *s) {
    free(s->hist);
    free(s->head);
    s->hist = NULL;
    s->head = NULL;
}

/* Forget the history: what follows refers to nothing before it. */
static void td_reset(td_state *s) {
    s->have = 0;
    memset(s->head, 0, sizeof(uint16_t) << s->hbits);
}

static size_t td_memory(const td_state *s) {
    return 2 * (size_t)s->wsize + (sizeof(uint16_t) << s->hbits);
}

static inline void td_put(td_writer *w, uint32_t value, int n) {
    w->bits |= (uint64_t)value << w->nbits;
    w->nbits += n;
    if (w->nbits >= 32) {
        uint32_t word = (uint32_t)w->bits;
        memcpy(w->out, &word, 4); /* little-endian machines only (checked at build) */
        w->out += 4;
        w->bits >>= 32;
        w->nbits -= 32;
    }
}

static inline void td_align(td_writer *w) {
    while (w->nbits > 0) {
        *w->out++ = (uint8_t)w->bits;
        w->bits >>= 8;
        w->nbits -= 8;
    }
    w->bits = 0;
    w->nbits = 0;
}

static inline uint32_t td_hash(const uint8_t *p, uint32_t hbits) {
    uint32_t v;
    memcpy(&v, p, 4);
    return (v * 2654435761u) >> (32 - hbits);
}

static inline uint32_t td_match_length(const uint8_t *a, const uint8_t *b, uint32_t limit) {
    uint32_t n = 0;
    while (n + 8 <= limit) {
        uint64_t x, y;
        memcpy(&x, a + n, 8);
        memcpy(&y, b + n, 8);
        if (x != y)
            return n + (uint32_t)(__builtin_ctzll(x ^ y) >> 3);
        n += 8;
    }
    while (n < limit && a[n] == b[n])
        n++;
    return n;
}

/* Make room for n more bytes (n <= wsize) in the history: keep its last wsize bytes. */
static void td_slide(td_state *s, uint32_t n) {
    if (s->have + n <= 2 * s->wsize)
        return;
    uint32_t shift = s->have - s->wsize;
    memmove(s->hist, s->hist + shift, s->wsize);
    uint32_t count = 1u << s->hbits;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t e = s->head[i];
        s->head[i] = (uint16_t)(e > shift ? e - shift : 0);
    }
    s->have = s->wsize;
}

/* Encode `n` bytes at `in` as the symbols of the current block (greedy LZ77 against
 * the history and itself). */
static void td_symbols(td_state *s, td_writer *w, const uint8_t *in, size_t n) {
    const uint32_t hbits = s->hbits;
    while (n > 0) {
        uint32_t piece = n > s->wsize ? s->wsize : (uint32_t)n;
        td_slide(s, piece);
        uint8_t *hist = s->hist;
        uint32_t p = s->have;
        memcpy(hist + p, in, piece);
        uint32_t end = p + piece;
        s->have = end;
        while (p < end) {
            uint32_t limit = end - p;
            if (limit >= 4) {
                uint32_t h = td_hash(hist + p, hbits);
                uint32_t cand = s->head[h];
                s->head[h] = (uint16_t)(p + 1);
                if (cand != 0) {
                    uint32_t c = cand - 1;
                    uint32_t dist = p - c;
                    if (dist <= s->wsize) {
                        uint32_t len = td_match_length(hist + p, hist + c, limit > 258 ? 258 : limit);
                        if (len >= 4) {
                            td_put(w, td_len_bits[len], td_len_n[len]);
                            uint32_t x = dist - 1;
                            if (x < 4) {
                                td_put(w, td_dist_rev[x], 5);
                            } else {
                                int nb = 31 - __builtin_clz(x);
                                uint32_t code = 2 * nb + ((x >> (nb - 1)) & 1);
                                int extra = nb - 1;
                                td_put(w, td_dist_rev[code] | ((x & ((1u << extra) - 1)) << 5), 5 + extra);
                            }
                            /* The positions inside the match join the hash, so the next
                             * message finds them (repeated keys are most of a tick). */
                            uint32_t stop = p + len;
                            if (stop > end - 3)
                                stop = end - 3;
                            for (uint32_t q = p + 1; q < stop; q++)
                                s->head[td_hash(hist + q, hbits)] = (uint16_t)(q + 1);
                            p += len;
                            continue;
                        }
                    }
                }
            }
            uint8_t v = hist[p];
            td_put(w, td_lit_code[v], td_lit_len[v]);
            p++;
        }
        in += piece;
        n -= piece;
    }
}

/* Compress `n` bytes as one fixed-code block followed by a sync flush (an empty stored
 * block: the output ends with 00 00 FF FF and is byte-aligned). `out` must hold
 * td_bound(n) bytes. Returns the bytes written. */
static size_t td_compress(td_state *s, const uint8_t *in, size_t n, uint8_t *out) {
    td_writer w = {out, 0, 0};
    if (n > 0) {
        td_put(&w, 2, 3);       /* BFINAL 0, BTYPE 01: fixed codes */
        td_symbols(s, &w, in, n);
        td_put(&w, 0, 7);       /* end of block (symbol 256) */
    }
    td_put(&w, 0, 3);           /* BFINAL 0, BTYPE 00: stored */
    td_align(&w);
    memcpy(w.out, "\x00\x00\xff\xff", 4);
    return (size_t)(w.out + 4 - out);
}

/* The last block of a stream (empty, BFINAL 1): two bytes. */
static size_t td_finish(uint8_t *out) {
    td_writer w = {out, 0, 0};
    td_put(&w, 3, 3);           /* BFINAL 1, fixed codes */
    td_put(&w, 0, 7);           /* end of block */
    td_align(&w);
    return (size_t)(w.out - out);
}

#endif
