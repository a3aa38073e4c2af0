/* The load client of bench/client.py in C, so that it is never the bottleneck.
 *
 * Built on first use by bench/client.py (cc -O2); the same arguments and the same
 * JSON report, except that the latency samples go, as int64 triples (seq, submit ns,
 * latency ns), to the file named by --stamps, and bench/client.py summarises them.
 *
 *   loadclient --port P --transport sse|ws -n N --expect M [--timeout S]
 *              [--sample-every K] [--stalled S] [--stalled-rcvbuf B] [--hold]
 *              [--stamps FILE] [--topics T --topics-per-conn K] [--compress]
 *
 * SSE: counts "\ndata:" in the de-chunked body (the body starts a line). WebSocket:
 * counts final data frames walking the frame headers. Sampled connections also scan
 * the raw bytes for "<8 digits> @<digits>@" payload stamps, checking the order.
 *
 * Topics mode (--topics T --topics-per-conn K): connection i requests
 * "/sse?topics=S000,S010,..." (or /ws), the K topics (i + (T / K) * k) % T, as
 * bench/client.py's topic_indices(); tick seq belongs to topic seq % T. A sampled
 * connection checks per topic that its ticks are exactly t, t + T, t + 2T, ... in
 * order (anything else, and ticks still missing at the end, is disorder) and counts
 * frames that arrive after a later tick of another topic ("sampled_reordered").
 *
 * --compress asks for compression (SSE: Accept-Encoding: gzip; WebSocket: an offer of
 * permessage-deflate). A gzip'd SSE body is inflated (zlib) before events are counted;
 * compressed WebSocket frames are counted from their headers and inflated, with
 * context, on sampled connections (whose stamps are read from the inflated bytes).
 * "wire_bytes" reports the body bytes received, after the response heads.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <zlib.h>

#define RECV_SIZE (128 * 1024)
#define TAIL 48

typedef struct {
    int fd;
    int in_body, chunked, dead;
    long long frames;
    /* head */
    char head[4096];
    int head_len;
    /* SSE de-chunking */
    int cstate;        /* 0: chunk size line, 1: chunk data, 2: CRLF after data */
    long long chunk_left;
    int crlf_left;
    int match;         /* chars of "\ndata:" matched so far */
    /* WebSocket */
    unsigned char hdr[14];
    int hdr_len;
    long long skip;
    /* sampling */
    int sampled;
    unsigned char tail[TAIL];
    int tail_len;
    long long next_seq;
    long long disorder, seen;
    /* topics mode, sampled: per topic the next tick expected (-1: not subscribed) */
    long long *topic_next;
    long long max_seq, reordered;
    /* compression: gzip'd SSE body, or permessage-deflate frames (RSV1) */
    int gzip, deflate, zready, zframe;
    z_stream z;
} Sub;

static int n_topics = 0, topics_per_conn = 0;

/* connection i's k-th topic: (i + (T / K) * k) % T, as bench/client.py topic_indices() */
static int topic_index(int i, int k) {
    return (int)(((long long)i + (long long)(n_topics / topics_per_conn) * k) % n_topics);
}

static volatile sig_atomic_t stop_flag = 0;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* error strings, deduplicated */
static char errors[16][128];
static int n_errors_distinct = 0;
static long long error_count = 0;
static void add_error(const char *msg) {
    error_count++;
    for (int i = 0; i < n_errors_distinct; i++)
        if (strcmp(errors[i], msg) == 0) return;
    if (n_errors_distinct < 16) {
        snprintf(errors[n_errors_distinct++], 128, "%s", msg);
    }
}

/* stamps: growable int64 array */
static int64_t *stamps = NULL;
static size_t n_stamps = 0, cap_stamps = 0;
static void push_stamp(int64_t a, int64_t b, int64_t c) {
    if (n_stamps + 3 > cap_stamps) {
        cap_stamps = cap_stamps ? cap_stamps * 2 : 1 << 16;
        stamps = realloc(stamps, cap_stamps * sizeof(int64_t));
        if (!stamps) { perror("realloc"); exit(2); }
    }
    stamps[n_stamps++] = a; stamps[n_stamps++] = b; stamps[n_stamps++] = c;
}

static const char PAT[] = "\ndata:";

/* count "\ndata:" in a body segment, carrying a partial match across calls */
static long long count_data(Sub *s, const unsigned char *p, size_t n) {
    long long found = 0;
    size_t i = 0;
    while (s->match && i < n) {
        if (p[i] == (unsigned char)PAT[s->match]) {
            s->match++; i++;
            if (s->match == 6) { found++; s->match = 0; }
        } else {
            s->match = 0;  /* re-examine this byte from the start */
        }
    }
    while (i < n) {
        const unsigned char *q = memchr(p + i, '\n', n - i);
        if (!q) break;
        size_t j = q - p;
        if (n - j >= 6) {
            if (memcmp(q, PAT, 6) == 0) { found++; i = j + 6; } else i = j + 1;
        } else {
            /* partial at the end */
            size_t k = j + 1;
            s->match = 1;
            while (k < n && s->match) {
                if (p[k] == (unsigned char)PAT[s->match]) { s->match++; k++; }
                else { s->match = 0; }
            }
            if (s->match == 0 && k < n) { i = k; continue; }
            break;
        }
    }
    return found;
}

static void take_stamps(Sub *s, const unsigned char *data, size_t n, int64_t now);
static long long wire_bytes = 0;
static unsigned char zout[256 * 1024];

/* Inflate n compressed bytes of s's stream; the output is counted (SSE) and, on
 * sampled connections, scanned for stamps. Returns -1 on a decoding error. */
static int inflate_some(Sub *s, const unsigned char *p, size_t n, const char **err) {
    s->z.next_in = (unsigned char *)p;
    s->z.avail_in = (unsigned)n;
    do {
        s->z.next_out = zout;
        s->z.avail_out = sizeof zout;
        int rc = inflate(&s->z, Z_SYNC_FLUSH);
        if (rc != Z_OK && rc != Z_BUF_ERROR && rc != Z_STREAM_END) {
            *err = "compressed stream does not decode";
            return -1;
        }
        size_t out = sizeof zout - s->z.avail_out;
        if (s->gzip) s->frames += count_data(s, zout, out);
        if (s->sampled && out) take_stamps(s, zout, out, now_ns());
        if (rc == Z_BUF_ERROR || rc == Z_STREAM_END) break;
    } while (s->z.avail_in > 0 || s->z.avail_out == 0);
    return 0;
}

static int sse_payload(Sub *s, const unsigned char *p, size_t n, const char **err) {
    if (!s->gzip) { s->frames += count_data(s, p, n); return 0; }
    return inflate_some(s, p, n, err);
}

/* returns -1 on protocol error (message set) */
static int feed_sse(Sub *s, const unsigned char *p, size_t n, const char **err) {
    size_t i = 0;
    if (!s->chunked) return sse_payload(s, p, n, err);
    while (i < n) {
        if (s->cstate == 1) {
            size_t take = (long long)(n - i) < s->chunk_left ? n - i : (size_t)s->chunk_left;
            if (sse_payload(s, p + i, take, err) < 0) return -1;
            s->chunk_left -= take; i += take;
            if (s->chunk_left == 0) { s->cstate = 2; s->crlf_left = 2; }
        } else if (s->cstate == 2) {
            while (i < n && s->crlf_left) { i++; s->crlf_left--; }
            if (!s->crlf_left) { s->cstate = 0; s->chunk_left = -1; }
        } else {
            /* size line: hex digits, optional ;ext, CRLF. chunk_left = -1 before digits */
            unsigned char c = p[i++];
            if (c == '\n') {
                if (s->chunk_left <= 0) {
                    if (s->chunk_left == 0) { *err = "SSE stream ended by the server"; return -1; }
                    continue;  /* empty line */
                }
                s->cstate = 1;
            } else if (c == '\r' || c == ';' || s->crlf_left == -1) {
                if (c == ';') s->crlf_left = -1;  /* extension: ignore until LF */
            } else {
                int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                      : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
                if (v < 0) { *err = "bad chunk size"; return -1; }
                s->chunk_left = (s->chunk_left < 0 ? 0 : s->chunk_left) * 16 + v;
            }
            if (s->cstate == 1) s->crlf_left = 0;
        }
    }
    return 0;
}

static const unsigned char WS_TRAILER[4] = {0x00, 0x00, 0xff, 0xff};

static int feed_ws(Sub *s, const unsigned char *p, size_t n, const char **err) {
    size_t i = 0;
    for (;;) {
        if (s->skip) {
            long long take = (long long)(n - i) < s->skip ? (long long)(n - i) : s->skip;
            if (s->zframe && inflate_some(s, p + i, (size_t)take, err) < 0) return -1;
            s->skip -= take; i += take;
            if (s->skip) return 0;
            if (s->zframe && inflate_some(s, WS_TRAILER, 4, err) < 0) return -1;
            s->zframe = 0;
        }
        /* gather a header */
        while (i < n && s->hdr_len < 2) s->hdr[s->hdr_len++] = p[i++];
        if (s->hdr_len < 2) return 0;
        int len7 = s->hdr[1] & 0x7f;
        if (s->hdr[1] & 0x80) { *err = "masked frame from server"; return -1; }
        int need = len7 < 126 ? 2 : len7 == 126 ? 4 : 10;
        while (i < n && s->hdr_len < need) s->hdr[s->hdr_len++] = p[i++];
        if (s->hdr_len < need) return 0;
        long long length = len7;
        if (need > 2) {
            length = 0;
            for (int k = 2; k < need; k++) length = (length << 8) | s->hdr[k];
        }
        int opcode = s->hdr[0] & 0x0f;
        if (opcode == 8) { *err = "WebSocket closed by the server"; return -1; }
        if ((s->hdr[0] & 0x80) && opcode <= 2) s->frames++;
        if ((s->hdr[0] & 0x40) && !s->deflate) { *err = "RSV1 without permessage-deflate"; return -1; }
        /* sampled connections inflate what they read the stamps from */
        s->zframe = (s->hdr[0] & 0x40) && s->sampled;
        s->hdr_len = 0;
        s->skip = length;
        if (s->zframe && !length) {
            if (inflate_some(s, WS_TRAILER, 4, err) < 0) return -1;
            s->zframe = 0;
        }
        if (i >= n && !s->skip) return 0;
    }
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static unsigned char scratch[RECV_SIZE + TAIL];

static void take_stamps(Sub *s, const unsigned char *data, size_t n, int64_t now) {
    memcpy(scratch, s->tail, s->tail_len);
    memcpy(scratch + s->tail_len, data, n);
    size_t len = s->tail_len + n, i = 0, last = 0;
    while (i < len) {
        unsigned char *q = memchr(scratch + i, '@', len - i);
        if (!q) break;
        size_t at = q - scratch;
        i = at + 1;
        if (at < 9 || scratch[at - 1] != ' ') continue;
        int ok = 1;
        for (size_t k = at - 9; k < at - 1; k++) if (!is_digit(scratch[k])) { ok = 0; break; }
        if (!ok) continue;
        size_t k = at + 1;
        int64_t t = 0;
        while (k < len && is_digit(scratch[k])) { t = t * 10 + (scratch[k] - '0'); k++; }
        if (k >= len || scratch[k] != '@' || k == at + 1) continue;
        int64_t seq = 0;
        for (size_t d = at - 9; d < at - 1; d++) seq = seq * 10 + (scratch[d] - '0');
        if (s->topic_next) {
            /* topics: exactly this connection's ticks, in order within each topic */
            int topic = (int)(seq % n_topics);
            long long expected = s->topic_next[topic];
            if (seq != expected) s->disorder++;
            if (expected >= 0) s->topic_next[topic] = seq + n_topics;
            if (seq < s->max_seq) s->reordered++;
            else s->max_seq = seq;
        } else {
            if (s->next_seq >= 0 && seq != s->next_seq) s->disorder++;
            s->next_seq = seq + 1;
        }
        s->seen++;
        push_stamp(seq, t, now - t);
        last = k + 1;
        i = k + 1;
    }
    size_t from = len > TAIL ? len - TAIL : 0;
    if (last > from) from = last;
    s->tail_len = len - from;
    memmove(s->tail, scratch + from, s->tail_len);
}

static int parse_head(Sub *s, const char *transport, const unsigned char *p, size_t n,
                      size_t *used, const char **err) {
    size_t room = sizeof(s->head) - 1 - s->head_len;
    size_t take = n < room ? n : room;
    memcpy(s->head + s->head_len, p, take);
    s->head_len += take;
    s->head[s->head_len] = 0;
    char *end = strstr(s->head, "\r\n\r\n");
    if (!end) {
        if (take < n) { *err = "response head too long"; return -1; }
        *used = n;
        return 0;
    }
    size_t head_len = end - s->head + 4;
    *used = take - (s->head_len - head_len);
    const char *want = strcmp(transport, "sse") == 0 ? " 200" : " 101";
    char *sp = strchr(s->head, ' ');
    if (!sp || strncmp(sp, want, 4) != 0) {
        *err = strcmp(transport, "sse") == 0 ? "SSE status not 200" : "WebSocket status not 101";
        return -1;
    }
    /* lower-case search for chunked */
    for (char *c = s->head; c < end; c++) if (*c >= 'A' && *c <= 'Z') *c += 32;
    s->chunked = strstr(s->head, "transfer-encoding: chunked") != NULL;
    s->gzip = strstr(s->head, "content-encoding: gzip") != NULL;
    s->deflate = strstr(s->head, "sec-websocket-extensions: permessage-deflate") != NULL;
    if (s->gzip || s->deflate) {
        if (inflateInit2(&s->z, s->gzip ? 16 + 15 : -15) != Z_OK) {
            *err = "inflateInit2 failed";
            return -1;
        }
        s->zready = 1;
    }
    s->in_body = 1;
    s->cstate = 0; s->chunk_left = -1; s->crlf_left = 0;
    s->match = 1;  /* the body starts a line */
    return 0;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *transport = "sse", *stamps_path = NULL;
    int port = 0, n = 0, sample_every = 0, stalled = 0, rcvbuf = 1024, hold = 0, compress = 0;
    long long expect = 0;
    double timeout = 600;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--host")) { host = v; i++; }
        else if (!strcmp(a, "--port")) { port = atoi(v); i++; }
        else if (!strcmp(a, "--transport")) { transport = v; i++; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--connections")) { n = atoi(v); i++; }
        else if (!strcmp(a, "--expect")) { expect = atoll(v); i++; }
        else if (!strcmp(a, "--timeout")) { timeout = atof(v); i++; }
        else if (!strcmp(a, "--sample-every")) { sample_every = atoi(v); i++; }
        else if (!strcmp(a, "--stalled")) { stalled = atoi(v); i++; }
        else if (!strcmp(a, "--stalled-rcvbuf")) { rcvbuf = atoi(v); i++; }
        else if (!strcmp(a, "--stamps")) { stamps_path = v; i++; }
        else if (!strcmp(a, "--hold")) { hold = 1; }
        else if (!strcmp(a, "--compress")) { compress = 1; }
        else if (!strcmp(a, "--topics")) { n_topics = atoi(v); i++; }
        else if (!strcmp(a, "--topics-per-conn")) { topics_per_conn = atoi(v); i++; }
        else { fprintf(stderr, "loadclient: unknown argument %s\n", a); return 2; }
    }
    if (n_topics && (topics_per_conn <= 0 || topics_per_conn > n_topics
                     || n_topics % topics_per_conn)) {
        fprintf(stderr, "loadclient: --topics-per-conn must divide --topics\n");
        return 2;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    int64_t deadline = now_ns() + (int64_t)(timeout * 1e9);
    int is_sse = strcmp(transport, "sse") == 0;
    static char request[8192];
    char path[6144];
    int ep = epoll_create1(0);
    int total = n + stalled;
    Sub *subs = calloc(total > 0 ? total : 1, sizeof(Sub));
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    inet_pton(AF_INET, host, &addr.sin_addr);
    for (int i = 0; i < total; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) { perror("socket"); return 2; }
        if (i >= n) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("connect"); return 2; }
        int len = snprintf(path, sizeof path, "/%s", is_sse ? "sse" : "ws");
        if (n_topics) {
            len += snprintf(path + len, sizeof path - len, "?topics=");
            for (int k = 0; k < topics_per_conn && len < (int)sizeof path - 16; k++)
                len += snprintf(path + len, sizeof path - len, "%sS%03d", k ? "," : "",
                                topic_index(i, k));
        }
        if (is_sse)
            len = snprintf(request, sizeof request,
                           "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n%s\r\n",
                           path, host, port, compress ? "Accept-Encoding: gzip, deflate\r\n" : "");
        else
            len = snprintf(request, sizeof request,
                           "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
                           path, host, port,
                           compress ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" : "");
        if (send(fd, request, len, 0) != len) { perror("send"); return 2; }
        Sub *s = &subs[i];
        s->fd = fd;
        s->next_seq = -1;
        if (i >= n) continue;
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        s->sampled = sample_every && i % sample_every == 0;
        s->max_seq = -1;
        if (s->sampled && n_topics) {
            s->topic_next = malloc(n_topics * sizeof(long long));
            if (!s->topic_next) { perror("malloc"); return 2; }
            for (int t = 0; t < n_topics; t++) s->topic_next[t] = -1;
            for (int k = 0; k < topics_per_conn; k++) {
                int t = topic_index(i, k);
                s->topic_next[t] = t;
            }
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    double cpu_connected = cpu_s();
    long long pending = expect ? n : 0;
    int64_t t_first = 0, t_last = 0;
    static unsigned char buf[RECV_SIZE];
    struct epoll_event events[4096];
    while ((pending || hold) && !stop_flag && now_ns() < deadline) {
        int k = epoll_wait(ep, events, 4096, 200);
        if (k < 0) { if (errno == EINTR) continue; perror("epoll_wait"); break; }
        for (int e = 0; e < k; e++) {
            Sub *s = &subs[events[e].data.u32];
            if (s->dead) continue;
            long long before = s->frames;
            ssize_t got = recv(s->fd, buf, sizeof buf, 0);
            const char *err = NULL;
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (got < 0) err = "recv failed";
            else if (got == 0) err = "connection closed by the server";
            else {
                size_t off = 0;
                if (!s->in_body) {
                    size_t used = 0;
                    if (parse_head(s, transport, buf, got, &used, &err) == 0) off = used;
                }
                if (!err && s->in_body && off < (size_t)got) {
                    wire_bytes += got - off;
                    if (is_sse) feed_sse(s, buf + off, got - off, &err);
                    else feed_ws(s, buf + off, got - off, &err);
                }
            }
            if (err) {
                add_error(err);
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                s->dead = 1;
                if (before < expect) pending--;
                continue;
            }
            /* every byte: stamps straddle (compressed streams: the inflated bytes, above) */
            if (s->sampled && !s->zready) take_stamps(s, buf, got, now_ns());
            if (s->frames > before) {
                t_last = now_ns();
                if (!t_first) t_first = t_last;
                if (before < expect && expect <= s->frames) pending--;
            }
        }
    }
    double cpu = cpu_s();
    long long sum = 0, mn = -1, mx = 0, disorder = 0, seen = 0, reordered = 0;
    int sampled = 0;
    for (int i = 0; i < n; i++) {
        Sub *s = &subs[i];
        sum += s->frames;
        if (mn < 0 || s->frames < mn) mn = s->frames;
        if (s->frames > mx) mx = s->frames;
        if (s->sampled) {
            sampled++; disorder += s->disorder; seen += s->seen; reordered += s->reordered;
            if (s->topic_next) {
                /* ticks still missing: each topic should have reached expect / K, in order */
                long long share = expect / topics_per_conn;
                for (int t = 0; t < n_topics; t++) {
                    if (s->topic_next[t] < 0) continue;
                    long long got = (s->topic_next[t] - t) / n_topics;
                    if (got < share) disorder += share - got;
                }
            }
        }
    }
    if (mn < 0) mn = 0;
    if (stamps_path) {
        FILE *f = fopen(stamps_path, "wb");
        if (f) { fwrite(stamps, sizeof(int64_t), n_stamps, f); fclose(f); }
    }
    printf("{\"connections\": %d, \"stalled\": %d, \"expect\": %lld, \"total\": %lld, \"min\": %lld, "
           "\"max\": %lld, \"complete\": %s, \"errors\": [", n, stalled, expect, sum, mn, mx,
           (n > 0 && mn >= expect) ? "true" : "false");
    for (int i = 0; i < n_errors_distinct; i++) printf("%s\"%s\"", i ? ", " : "", errors[i]);
    printf("], \"error_count\": %lld, \"cpu_s\": %.6f, \"cpu_connected_s\": %.6f, ", error_count, cpu,
           cpu_connected);
    printf("\"wire_bytes\": %lld, ", wire_bytes);
    if (t_first) printf("\"t_first\": %.9f, \"t_last\": %.9f, ", t_first / 1e9, t_last / 1e9);
    else printf("\"t_first\": null, \"t_last\": null, ");
    printf("\"sampled_connections\": %d, \"sampled_disorder\": %lld, \"sampled_seen\": %lld, "
           "\"sampled_reordered\": %lld, \"latency\": null, \"client\": \"c\"}\n",
           sampled, disorder, seen, reordered);
    fflush(stdout);
    return 0;
}
