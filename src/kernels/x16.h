/* x16.h: byte layout of the x16 packed weight blocks (kernels.h has the API), shared by
 * the packer (pack.c) and the kernels that read it. Internal to src/kernels.
 *
 * One packed block = the same GGUF block of 16 rows. Notation: r < 16 row, i < 4 byte in
 * a 4-byte group, g k-group, [a][b] outer index first, d/dmin/m arrays of 16 f16.
 *
 *   q8_0  d | q[8 g][16 r][4 i] = qs[4g+i]
 *   q4_0  d | q[4 g][16 r][4 i] = qs[4g+i]   low nibble: k-group g, high nibble: g + 4
 *   q4_1  d | m | q as q4_0
 *   q5_0  d | hb[8 g] u64, bit 4r+i = bit 4g+i of qh (the 5th bit of k-group g) | q
 *   q5_1  d | m | hb | q
 *   q4_K  d | dmin | sc[3][16] u32 = scales bytes 4j..4j+3 of row r |
 *         q[4 c][8 g][16 r][4 i] = qs[32c+4g+i]   low nibble: sub-block 2c, high: 2c + 1
 *   q5_K  d | dmin | sc | v[4 c] { hb[2 j'][8 g] u64, bit 4r+i = bit 2c+j' of qh[4g+i],
 *         q[8 g][16 r][4 i] = qs[32c+4g+i] } (chunk c of q4_K's q after its two sub-blocks'
 *         fifth bits: read in order)
 *   q6_K  d | sc[16 j][16 r] i8 | pad | v[2 h][2 s] { qh[4 g'][16 r][4 i] = qh[32h+4g+i],
 *         ql[2 kk][4 g'][16 r][4 i] = ql[64h+32kk+4g+i] }, g = 4s+g'
 *         element 128h+32k+4g+i: ql nibble of kk = k & 1 (low if k < 2), qh bits 2k..2k+1;
 *         a kernel going through h, s, kk reads the block strictly in order
 *   q3_K  d | sc[3][16] u32 | pad | v[2 s] { hm[4 g'][16 r][4 i] = hmask[4g+i],
 *         q[2 h][4 g'][16 r][4 i] = qs[32h+4g+i] }, g = 4s+g'
 *         element 128h+32k+4g+i: bits 2k..2k+1 of q, bit 4h+k of hm
 *   q2_K  d | dmin | sc[16 j][16 r] u8 | q[2 h][8 g][16 r][4 i] = qs[32h+4g+i]
 *   bf16  blocks of 32: p[16 kp][16 r][2] = elements 2kp, 2kp+1 (an AMX-BF16 B tile)
 *   f16   blocks of 32: p[32 k][16 r]
 *
 * The offsets below are in bytes from the start of a packed block. The value arrays start
 * on a 64-byte boundary, and q6_K / q3_K blocks are padded to a multiple of 64 bytes (+1% /
 * +2%) so every vector load is one cache line: unaligned, q6_K's GEMV streamed at a third
 * of the bandwidth.
 */
#ifndef ML_X16_LAYOUT_H
#define ML_X16_LAYOUT_H

enum {
  X16_Q8_0_Q = 32, X16_Q8_0_BYTES = 544,
  X16_Q4_0_Q = 32, X16_Q4_0_BYTES = 288,
  X16_Q4_1_M = 32, X16_Q4_1_Q = 64, X16_Q4_1_BYTES = 320,
  X16_Q5_0_HB = 32, X16_Q5_0_Q = 96, X16_Q5_0_BYTES = 352,
  X16_Q5_1_M = 32, X16_Q5_1_HB = 64, X16_Q5_1_Q = 128, X16_Q5_1_BYTES = 384,
  X16_Q4_K_DMIN = 32, X16_Q4_K_SC = 64, X16_Q4_K_Q = 256, X16_Q4_K_BYTES = 2304,
  X16_Q5_K_DMIN = 32, X16_Q5_K_SC = 64, X16_Q5_K_V = 256, X16_Q5_K_BYTES = 2816,
  X16_Q6_K_SC = 32, X16_Q6_K_V = 320, X16_Q6_K_BYTES = 3392,
  X16_Q3_K_SC = 32, X16_Q3_K_V = 256, X16_Q3_K_BYTES = 1792,
  X16_Q2_K_DMIN = 32, X16_Q2_K_SC = 64, X16_Q2_K_Q = 320, X16_Q2_K_BYTES = 1344,
  X16_BF16_BYTES = 1024, X16_F16_BYTES = 1024
};

/* q3_K: byte offsets of k-group g's high-bit mask, and of its low bits in half h */
#define X16_Q3_K_HM(g) (X16_Q3_K_V + 768 * ((g) / 4) + 64 * ((g) % 4))
#define X16_Q3_K_Q(h, g) (X16_Q3_K_HM(g) + 256 + 256 * (h))
/* q5_K: byte offsets of sub-block j's fifth bits of k-group g, and of chunk c's low bits */
#define X16_Q5_K_HB(j, g) (X16_Q5_K_V + 640 * ((j) / 2) + 64 * ((j) % 2) + 8 * (g))
#define X16_Q5_K_QC(c) (X16_Q5_K_V + 640 * (c) + 128)
/* q4_K / q5_K: chunk c's 8 k-groups of nibbles */
#define X16_QK_CHUNK(is5, c) ((is5) ? X16_Q5_K_QC(c) : X16_Q4_K_Q + 512 * (c))
/* q6_K: byte offsets of k-group g's high bits (h) and low bits (h, kk) */
#define X16_Q6_K_QH(h, g) (X16_Q6_K_V + 768 * (2 * (h) + (g) / 4) + 64 * ((g) % 4))
#define X16_Q6_K_QL(h, kk, g) (X16_Q6_K_QH(h, g) + 256 + 256 * (kk))

#endif
