/* ZeroTier's memory-hard address hash (identity type 0), the C accelerator of hactl/zt/identity.py.
 *
 * int hactl_zt_mhh(const unsigned char public_key[64], unsigned char digest[64])
 *
 * returns 0 and writes the same 64 bytes as hactl.zt.identity.memory_hard_hash_python, or -1 if the 2 MiB work
 * area cannot be allocated. The algorithm (docs: /work/shared/zerotier-protocol.md section 2.6; reference:
 * ZeroTierOne node/Identity.cpp _computeMemoryHardHash):
 *   1. digest = SHA-512(public key);
 *   2. one Salsa20/20 keystream, key = digest[0:32], nonce = digest[32:40], block counter from 0;
 *   3. memory (2 MiB, 32 768 blocks): block 0 = keystream block 0, block i = block i-1 XOR keystream block i;
 *   4. for each pair of 8-byte memory words (131 072 rounds): the first (big-endian) mod 8 picks a digest word,
 *      the second (big-endian) mod 262 144 a memory word; the two are swapped as raw bytes, then the digest is
 *      XORed with the next keystream block (32 768 + round).
 *
 * Self-contained (own SHA-512 and Salsa20/20; no headers or libraries beyond libc), so `cc -O2 -shared -fPIC`
 * is the whole build. The keystream is independent of the data, so Salsa20 runs 16 blocks at a time in vector
 * lanes (GCC/Clang vector extensions); on x86-64 the 16-lane function is compiled three times (AVX-512F, AVX2,
 * baseline SSE2) and picked at run time with __builtin_cpu_supports. Every variant computes the same integers.
 * No global state: safe to call from several threads at once (ctypes releases the GIL during the call).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MHH_MEMORY 2097152u                  /* bytes of work memory */
#define MHH_BLOCKS (MHH_MEMORY / 64u)        /* 32 768 Salsa20 blocks fill it */
#define MHH_WORDS (MHH_MEMORY / 8u)          /* 262 144 8-byte words */
#define MHH_ROUNDS (MHH_WORDS / 2u)          /* each mixing round reads two words */
#define LANES 16u                            /* Salsa20 blocks computed side by side */

/* ---- little/big-endian access without assumptions about the host -------------------------------------- */

static inline uint32_t load32_le(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void store32_le(uint8_t *p, uint32_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(p, &v, 4);
#else
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
#endif
}

static inline uint64_t load64_be(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

static inline void store64_be(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; }
}

/* Raw 8-byte loads/stores (byte order irrelevant: only copied, swapped and XORed). */
static inline uint64_t load64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void store64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* ---- SHA-512 (FIPS 180-4) ------------------------------------------------------------------------------ */

static const uint64_t SHA512_K[80] = {
    0x428a2f98d728ae22ULL, 0x7137449123ef65cdULL, 0xb5c0fbcfec4d3b2fULL, 0xe9b5dba58189dbbcULL,
    0x3956c25bf348b538ULL, 0x59f111f1b605d019ULL, 0x923f82a4af194f9bULL, 0xab1c5ed5da6d8118ULL,
    0xd807aa98a3030242ULL, 0x12835b0145706fbeULL, 0x243185be4ee4b28cULL, 0x550c7dc3d5ffb4e2ULL,
    0x72be5d74f27b896fULL, 0x80deb1fe3b1696b1ULL, 0x9bdc06a725c71235ULL, 0xc19bf174cf692694ULL,
    0xe49b69c19ef14ad2ULL, 0xefbe4786384f25e3ULL, 0x0fc19dc68b8cd5b5ULL, 0x240ca1cc77ac9c65ULL,
    0x2de92c6f592b0275ULL, 0x4a7484aa6ea6e483ULL, 0x5cb0a9dcbd41fbd4ULL, 0x76f988da831153b5ULL,
    0x983e5152ee66dfabULL, 0xa831c66d2db43210ULL, 0xb00327c898fb213fULL, 0xbf597fc7beef0ee4ULL,
    0xc6e00bf33da88fc2ULL, 0xd5a79147930aa725ULL, 0x06ca6351e003826fULL, 0x142929670a0e6e70ULL,
    0x27b70a8546d22ffcULL, 0x2e1b21385c26c926ULL, 0x4d2c6dfc5ac42aedULL, 0x53380d139d95b3dfULL,
    0x650a73548baf63deULL, 0x766a0abb3c77b2a8ULL, 0x81c2c92e47edaee6ULL, 0x92722c851482353bULL,
    0xa2bfe8a14cf10364ULL, 0xa81a664bbc423001ULL, 0xc24b8b70d0f89791ULL, 0xc76c51a30654be30ULL,
    0xd192e819d6ef5218ULL, 0xd69906245565a910ULL, 0xf40e35855771202aULL, 0x106aa07032bbd1b8ULL,
    0x19a4c116b8d2d0c8ULL, 0x1e376c085141ab53ULL, 0x2748774cdf8eeb99ULL, 0x34b0bcb5e19b48a8ULL,
    0x391c0cb3c5c95a63ULL, 0x4ed8aa4ae3418acbULL, 0x5b9cca4f7763e373ULL, 0x682e6ff3d6b2b8a3ULL,
    0x748f82ee5defb2fcULL, 0x78a5636f43172f60ULL, 0x84c87814a1f0ab72ULL, 0x8cc702081a6439ecULL,
    0x90befffa23631e28ULL, 0xa4506cebde82bde9ULL, 0xbef9a3f7b2c67915ULL, 0xc67178f2e372532bULL,
    0xca273eceea26619cULL, 0xd186b8c721c0c207ULL, 0xeada7dd6cde0eb1eULL, 0xf57d4f7fee6ed178ULL,
    0x06f067aa72176fbaULL, 0x0a637dc5a2c898a6ULL, 0x113f9804bef90daeULL, 0x1b710b35131c471bULL,
    0x28db77f523047d84ULL, 0x32caab7b40c72493ULL, 0x3c9ebe0a15c9bebcULL, 0x431d67c49c100d4cULL,
    0x4cc5d4becb3e42b6ULL, 0x597f299cfc657e2aULL, 0x5fcb6fab3ad6faecULL, 0x6c44198c4a475817ULL,
};

static inline uint64_t ror64(uint64_t x, unsigned n) { return (x >> n) | (x << (64 - n)); }

static void sha512_block(uint64_t h[8], const uint8_t block[128]) {
    uint64_t w[80];
    for (int t = 0; t < 16; t++) w[t] = load64_be(block + 8 * t);
    for (int t = 16; t < 80; t++) {
        uint64_t s0 = ror64(w[t - 15], 1) ^ ror64(w[t - 15], 8) ^ (w[t - 15] >> 7);
        uint64_t s1 = ror64(w[t - 2], 19) ^ ror64(w[t - 2], 61) ^ (w[t - 2] >> 6);
        w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    uint64_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int t = 0; t < 80; t++) {
        uint64_t t1 = hh + (ror64(e, 14) ^ ror64(e, 18) ^ ror64(e, 41)) + ((e & f) ^ (~e & g)) + SHA512_K[t] + w[t];
        uint64_t t2 = (ror64(a, 28) ^ ror64(a, 34) ^ ror64(a, 39)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

static void sha512(const uint8_t *msg, size_t len, uint8_t out[64]) {
    uint64_t h[8] = {
        0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
        0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
    };
    size_t full = len / 128;
    for (size_t i = 0; i < full; i++) sha512_block(h, msg + 128 * i);
    uint8_t tail[256] = {0};
    size_t rest = len - 128 * full;
    memcpy(tail, msg + 128 * full, rest);
    tail[rest] = 0x80;
    size_t tail_len = rest + 1 + 16 <= 128 ? 128 : 256;
    store64_be(tail + tail_len - 8, (uint64_t)len << 3);  /* bit length; messages here are far below 2^61 */
    for (size_t off = 0; off < tail_len; off += 128) sha512_block(h, tail + off);
    for (int i = 0; i < 8; i++) store64_be(out + 8 * i, h[i]);
}

/* ---- Salsa20/20, LANES consecutive blocks per call ---------------------------------------------------- */

/* SALSA20_BODY(name, n) defines name(in, counter, out): keystream blocks counter .. counter+n-1 of the Salsa20/20
 * state `in` (its words 8-9, the block counter, are ignored), written as n*64 bytes to out. Lane l of vector x[w]
 * holds word w of block counter+l. n is chosen per instruction set so that the 16 state vectors fit in
 * registers: 16 lanes for AVX-512 (32 zmm), 8 for AVX2 (16 ymm), 4 for SSE2 and other targets. */
#define VROTL(v, n) (((v) << (n)) | ((v) >> (32 - (n))))
#define QR(a, b, c, d) do {        \
        b ^= VROTL(a + d, 7);      \
        c ^= VROTL(b + a, 9);      \
        d ^= VROTL(c + b, 13);     \
        a ^= VROTL(d + c, 18);     \
    } while (0)

#define SALSA20_BODY(name, n)                                                                               \
    typedef uint32_t name##_vec __attribute__((vector_size((n) * 4)));                                      \
    static inline __attribute__((always_inline)) void name(const uint32_t in[16], uint64_t counter,         \
                                                           uint8_t *out) {                                  \
        name##_vec x[16], s[16];                                                                            \
        for (int w = 0; w < 16; w++)                                                                        \
            for (unsigned l = 0; l < (n); l++) s[w][l] = in[w];                                             \
        for (unsigned l = 0; l < (n); l++) {                                                                \
            uint64_t c = counter + l;                                                                       \
            s[8][l] = (uint32_t)c;                                                                          \
            s[9][l] = (uint32_t)(c >> 32);                                                                  \
        }                                                                                                   \
        for (int w = 0; w < 16; w++) x[w] = s[w];                                                           \
        for (int i = 0; i < 10; i++) { /* 10 double rounds = 20 rounds */                                   \
            QR(x[0], x[4], x[8], x[12]);                                                                    \
            QR(x[5], x[9], x[13], x[1]);                                                                    \
            QR(x[10], x[14], x[2], x[6]);                                                                   \
            QR(x[15], x[3], x[7], x[11]);                                                                   \
            QR(x[0], x[1], x[2], x[3]);                                                                     \
            QR(x[5], x[6], x[7], x[4]);                                                                     \
            QR(x[10], x[11], x[8], x[9]);                                                                   \
            QR(x[15], x[12], x[13], x[14]);                                                                 \
        }                                                                                                   \
        uint32_t t[16][n];                                                                                  \
        for (int w = 0; w < 16; w++) {                                                                      \
            name##_vec v = x[w] + s[w];                                                                     \
            memcpy(t[w], &v, sizeof v);                                                                     \
        }                                                                                                   \
        for (unsigned l = 0; l < (n); l++)                                                                  \
            for (int w = 0; w < 16; w++) store32_le(out + 64 * l + 4 * w, t[w][l]);                         \
    }

SALSA20_BODY(salsa20_x4, 4)

/* Every variant below writes LANES (16) blocks per call. */
typedef void (*salsa20_lanes_fn)(const uint32_t in[16], uint64_t counter, uint8_t *out);

static void salsa20_lanes_generic(const uint32_t in[16], uint64_t counter, uint8_t *out) {
    for (unsigned l = 0; l < LANES; l += 4) salsa20_x4(in, counter + l, out + 64 * l);
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MHH_X86_DISPATCH 1
SALSA20_BODY(salsa20_x8, 8)
SALSA20_BODY(salsa20_x16, 16)
__attribute__((target("avx2"))) static void salsa20_lanes_avx2(const uint32_t in[16], uint64_t counter,
                                                               uint8_t *out) {
    for (unsigned l = 0; l < LANES; l += 8) salsa20_x8(in, counter + l, out + 64 * l);
}
__attribute__((target("avx512f"))) static void salsa20_lanes_avx512(const uint32_t in[16], uint64_t counter,
                                                                    uint8_t *out) {
    salsa20_x16(in, counter, out);
}
#endif

/* Variant choice: 0 = best the CPU supports, 1 = baseline, 2 = AVX2, 3 = AVX-512F (for the test of variants). */
static salsa20_lanes_fn pick_salsa20(int variant, const char **name) {
#ifdef MHH_X86_DISPATCH
    __builtin_cpu_init();
    int has512 = __builtin_cpu_supports("avx512f"), has2 = __builtin_cpu_supports("avx2");
    if ((variant == 0 || variant == 3) && has512) { *name = "avx512f"; return salsa20_lanes_avx512; }
    if (variant == 3) return NULL;
    if ((variant == 0 || variant == 2) && has2) { *name = "avx2"; return salsa20_lanes_avx2; }
    if (variant == 2) return NULL;
#else
    if (variant > 1) return NULL;
#endif
    *name = "generic";
    return salsa20_lanes_generic;
}

/* ---- the hash ------------------------------------------------------------------------------------------ */

static int mhh(const uint8_t public_key[64], uint8_t out[64], salsa20_lanes_fn salsa) {
    uint8_t digest[64];
    sha512(public_key, 64, digest);

    uint32_t state[16];
    state[0] = 0x61707865u; state[5] = 0x3320646eu; state[10] = 0x79622d32u; state[15] = 0x6b206574u;
    for (int i = 0; i < 4; i++) {
        state[1 + i] = load32_le(digest + 4 * i);        /* key[0:16] */
        state[11 + i] = load32_le(digest + 16 + 4 * i);  /* key[16:32] */
    }
    state[6] = load32_le(digest + 32);  /* nonce */
    state[7] = load32_le(digest + 36);
    state[8] = state[9] = 0;            /* block counter, set per lane */

    uint8_t *mem = malloc(MHH_MEMORY);
    if (!mem) return -1;

    /* Memory: keystream blocks 0..32767, then prefix XOR block by block (64 bytes = 8 words). */
    for (uint32_t b = 0; b < MHH_BLOCKS; b += LANES) salsa(state, b, mem + 64 * (size_t)b);
    for (size_t off = 64; off < MHH_MEMORY; off += 8) store64(mem + off, load64(mem + off) ^ load64(mem + off - 64));

    /* Mixing: round r reads words 2r and 2r+1 (big-endian), swaps, then XORs keystream block 32768 + r. */
    uint64_t d[8];
    memcpy(d, digest, 64);
    uint8_t ks[LANES * 64];
    for (uint32_t r = 0; r < MHH_ROUNDS; r++) {
        unsigned k = r % LANES;
        if (k == 0) salsa(state, (uint64_t)MHH_BLOCKS + r, ks);
        const uint8_t *p = mem + 16 * (size_t)r;
        unsigned idx1 = p[7] & 7u;                                                       /* word[2r] mod 8 */
        size_t idx2 = ((size_t)(p[13] & 3u) << 16) | ((size_t)p[14] << 8) | p[15];  /* word[2r+1] mod 2^18 */
        uint64_t tmp = load64(mem + 8 * idx2);
        store64(mem + 8 * idx2, d[idx1]);
        d[idx1] = tmp;
        for (int w = 0; w < 8; w++) d[w] ^= load64(ks + 64 * k + 8 * w);
    }
    memcpy(out, d, 64);
    free(mem);
    return 0;
}

static salsa20_lanes_fn best_salsa;

int hactl_zt_mhh(const unsigned char public_key[64], unsigned char digest[64]) {
    salsa20_lanes_fn fn = __atomic_load_n(&best_salsa, __ATOMIC_ACQUIRE);
    if (!fn) {  /* idempotent: racing threads store the same pointer */
        const char *name;
        fn = pick_salsa20(0, &name);
        __atomic_store_n(&best_salsa, fn, __ATOMIC_RELEASE);
    }
    return mhh(public_key, digest, fn);
}

/* The same hash with a chosen Salsa20 variant (1 baseline, 2 AVX2, 3 AVX-512F); -2 if this CPU/build lacks it. */
int hactl_zt_mhh_variant(const unsigned char public_key[64], unsigned char digest[64], int variant) {
    const char *name;
    salsa20_lanes_fn fn = pick_salsa20(variant, &name);
    return fn ? mhh(public_key, digest, fn) : -2;
}

/* Name of the variant hactl_zt_mhh uses ("avx512f", "avx2" or "generic"). */
const char *hactl_zt_mhh_impl(void) {
    const char *name;
    pick_salsa20(0, &name);
    return name;
}

/* Bumped whenever the exported functions change; the Python loader refuses another value. */
int hactl_zt_mhh_abi(void) { return 1; }
