// Fused exact nearest-code search for MedITok's multi-codebook quantiser (CPU).
//
//   meditok::nearest_codes(f [K,N,d] fp32, books [K,V,d] fp32) -> int64 [K,N]
//   out[k,n] = argmax_v  sum_j f[k,n,j] * books[k,v,j]
//
// Exactness contract ("the same tokens as bmm + argmax"):
//   * every score is computed as the sequential fp32 FMA chain
//         s = fma(f[d-1], b[d-1], ... fma(f[1], b[1], f[0] * b[0]) ...)
//     (std::fma: correctly rounded whatever the ISA), which is the order MKL's sgemm
//     micro-kernel uses for these shapes, so the scores are bitwise those of torch.bmm
//     (checked bit for bit in tests/test_speed_search.py);
//   * ties (equal fp32 scores) go to the smallest code index, as torch.argmax does;
//   * NaN/inf inputs (or magnitudes that could overflow) are refused here (status != 0) and
//     the Python wrapper falls back to the reference, which has torch's NaN semantics.
//
// Layout: the codebook is repacked per call into blocks of 16 codes, [K][V/16][d][16], so
// the 16 codes' dim-j values are contiguous (one 512-bit vector). A tile of R query rows x
// 16 codes stays in registers (acc, running max, running argmax per lane); the codebook of
// one sub-codebook (4096 x 8 fp32 = 128 KiB) stays in L2 while a task sweeps its rows.
//
// Portability: the kernel is plain C++ (fixed-size lane arrays + `#pragma omp simd` +
// std::fma); it is instantiated three times on x86-64 (AVX-512, AVX2+FMA, baseline) with
// GCC/Clang `target` attributes and chosen at run time with __builtin_cpu_supports, so one
// .so runs on any x86-64. Elsewhere (aarch64: FMA is in the base ISA) only the default
// instantiation is built. Threads: at::parallel_for (torch's own OpenMP pool), so
// torch.set_num_threads applies and no second OpenMP runtime is linked.
#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace {

constexpr int BW = 16;  // codes per packed block

#if defined(__GNUC__)
#define MT_INLINE inline __attribute__((always_inline))
#else
#define MT_INLINE inline
#endif

// One register tile: R query rows (q: [R][d], zero padded) against all codes of one
// sub-codebook packed as [nblk][d][16]. W = SIMD lanes handled per inner vector (16 on
// AVX-512; 8 on AVX2: a 16-block is two 8-lane halves, processed one after the other).
// DC = compile-time d (0: runtime d, generic path).
template <int DC, int R, int W, bool MASK>
MT_INLINE void sweep_blocks(const float* __restrict q, int d, const float* __restrict pb,
                            int64_t blk_begin, int64_t blk_end, int valid_last,
                            float (&maxv)[R][BW], int32_t (&maxi)[R][BW]) {
  const int D = DC > 0 ? DC : d;
  for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
    const float* b = pb + blk * (int64_t)D * BW;
    const int32_t base = (int32_t)(blk * BW);
#pragma GCC unroll 2
    for (int h = 0; h < BW; h += W) {
      float acc[R][W];
      // j = 0: plain product (fma(a, b, 0) rounds identically for finite inputs; MKL starts
      // from the first product too).
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const float qr = q[r * D + 0];
#pragma omp simd
        for (int l = 0; l < W; ++l) acc[r][l] = qr * b[h + l];
      }
#pragma GCC unroll 64
      for (int j = 1; j < D; ++j) {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          const float qr = q[r * D + j];
#pragma omp simd
          for (int l = 0; l < W; ++l) acc[r][l] = std::fma(qr, b[j * BW + h + l], acc[r][l]);
        }
      }
      if (MASK && blk == blk_end - 1) {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
#pragma omp simd
          for (int l = 0; l < W; ++l)
            if (h + l >= valid_last) acc[r][l] = -std::numeric_limits<float>::infinity();
        }
      }
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
#pragma omp simd
        for (int l = 0; l < W; ++l) {
          // strict '>': within a lane codes arrive in increasing index, so the lane keeps the
          // first index of its maximum.
          const bool gt = acc[r][l] > maxv[r][h + l];
          maxv[r][h + l] = gt ? acc[r][l] : maxv[r][h + l];
          maxi[r][h + l] = gt ? base + h + l : maxi[r][h + l];
        }
      }
    }
  }
}

template <int DC, int R, int W>
MT_INLINE void search_rows(const float* __restrict f, int64_t rows, int d,
                           const float* __restrict pb, int64_t V, int64_t* __restrict out) {
  const int D = DC > 0 ? DC : d;
  const int64_t nfull = V / BW;
  const int tail = (int)(V - nfull * BW);
  const int64_t nblk = nfull + (tail ? 1 : 0);
  float qbuf_static[DC > 0 ? R * DC : 1];
  float* qdyn = nullptr;
  float* q = qbuf_static;
  if (DC == 0) q = qdyn = new float[(size_t)R * D];
  for (int64_t r0 = 0; r0 < rows; r0 += R) {
    const int nr = (int)std::min<int64_t>(R, rows - r0);
    std::memcpy(q, f + r0 * D, sizeof(float) * (size_t)nr * D);
    if (nr < R) std::memset(q + (size_t)nr * D, 0, sizeof(float) * (size_t)(R - nr) * D);
    float maxv[R][BW];
    int32_t maxi[R][BW];
    for (int r = 0; r < R; ++r)
      for (int l = 0; l < BW; ++l) {
        maxv[r][l] = -std::numeric_limits<float>::infinity();
        maxi[r][l] = 0;
      }
    if (tail) {
      sweep_blocks<DC, R, W, false>(q, D, pb, 0, nfull, BW, maxv, maxi);
      sweep_blocks<DC, R, W, true>(q, D, pb, nfull, nblk, tail, maxv, maxi);
    } else {
      sweep_blocks<DC, R, W, false>(q, D, pb, 0, nfull, BW, maxv, maxi);
    }
    for (int r = 0; r < nr; ++r) {
      float best = maxv[r][0];
      for (int l = 1; l < BW; ++l) best = maxv[r][l] > best ? maxv[r][l] : best;
      int32_t bi = std::numeric_limits<int32_t>::max();
      for (int l = 0; l < BW; ++l)
        if (maxv[r][l] == best && maxi[r][l] < bi) bi = maxi[r][l];
      // all scores -inf cannot happen for finite inputs; keep argmax's answer (0) anyway
      out[r0 + r] = bi == std::numeric_limits<int32_t>::max() ? 0 : bi;
    }
  }
  delete[] qdyn;
}

// ------------------------------------------------------------------ x86 micro-kernels, d = 8
// Same arithmetic as the generic code (first product, then 7 FMAs in dim order; strict '>' per
// lane; smallest index among equal lane maxima), written with intrinsics so that the R-row tile
// provably stays in registers: 8 code vectors + R x (running max, running argmax) + temps.
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
#define MT_X86_DISPATCH 1
#include <immintrin.h>

#define MT_T512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
#define MT_T256 __attribute__((target("avx2,fma")))

MT_INLINE void finish_row(const float* mv, const int32_t* mi, int64_t* out) {
  float best = mv[0];
  for (int l = 1; l < BW; ++l) best = mv[l] > best ? mv[l] : best;
  int32_t bi = std::numeric_limits<int32_t>::max();
  for (int l = 0; l < BW; ++l)
    if (mv[l] == best && mi[l] < bi) bi = mi[l];
  *out = bi == std::numeric_limits<int32_t>::max() ? 0 : bi;
}

template <int R>
MT_T512 MT_INLINE void tile512_d8(const float* __restrict q, const float* __restrict pb,
                                  int64_t nblk, int valid_last, int nr, int64_t* __restrict out) {
  __m512 maxv[R];
  __m512i maxi[R];
  for (int r = 0; r < R; ++r) {
    maxv[r] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    maxi[r] = _mm512_setzero_si512();
  }
  __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(BW);
  const __mmask16 lastmask = (__mmask16)((1u << valid_last) - 1u);  // valid_last in 1..16
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const float* b = pb + blk * 8 * BW;
    const __m512 b0 = _mm512_loadu_ps(b + 0 * BW), b1 = _mm512_loadu_ps(b + 1 * BW);
    const __m512 b2 = _mm512_loadu_ps(b + 2 * BW), b3 = _mm512_loadu_ps(b + 3 * BW);
    const __m512 b4 = _mm512_loadu_ps(b + 4 * BW), b5 = _mm512_loadu_ps(b + 5 * BW);
    const __m512 b6 = _mm512_loadu_ps(b + 6 * BW), b7 = _mm512_loadu_ps(b + 7 * BW);
    const __mmask16 valid = blk == nblk - 1 ? lastmask : (__mmask16)0xFFFF;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const float* qr = q + r * 8;
      __m512 acc = _mm512_mul_ps(_mm512_set1_ps(qr[0]), b0);
      acc = _mm512_fmadd_ps(_mm512_set1_ps(qr[1]), b1, acc);
      acc = _mm512_fmadd_ps(_mm512_set1_ps(qr[2]), b2, acc);
      acc = _mm512_fmadd_ps(_mm512_set1_ps(qr[3]), b3, acc);
      acc = _mm512_fmadd_ps(_mm512_set1_ps(qr[4]), b4, acc);
      acc = _mm512_fmadd_ps(_mm512_set1_ps(qr[5]), b5, acc);
      acc = _mm512_fmadd_ps(_mm512_set1_ps(qr[6]), b6, acc);
      acc = _mm512_fmadd_ps(_mm512_set1_ps(qr[7]), b7, acc);
      const __mmask16 gt = _mm512_mask_cmp_ps_mask(valid, acc, maxv[r], _CMP_GT_OQ);
      maxv[r] = _mm512_mask_mov_ps(maxv[r], gt, acc);
      maxi[r] = _mm512_mask_mov_epi32(maxi[r], gt, idx);
    }
    idx = _mm512_add_epi32(idx, step);
  }
  alignas(64) float mv[BW];
  alignas(64) int32_t mi[BW];
  for (int r = 0; r < nr; ++r) {
    _mm512_store_ps(mv, maxv[r]);
    _mm512_store_si512((void*)mi, maxi[r]);
    finish_row(mv, mi, out + r);
  }
}

template <int R>
MT_T256 MT_INLINE void tile256_d8(const float* __restrict q, const float* __restrict pb,
                                  int64_t nblk, int valid_last, int nr, int64_t* __restrict out) {
  // AVX2 (16 ymm): a 16-code block is two 8-lane halves; each half keeps its own state.
  __m256 maxv[R][2];
  __m256i maxi[R][2];
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h) {
      maxv[r][h] = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
      maxi[r][h] = _mm256_setzero_si256();
    }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const float* bb = pb + blk * 8 * BW;
    const bool last = blk == nblk - 1 && valid_last < BW;
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const float* b = bb + h * 8;
      const __m256i idx = _mm256_add_epi32(lane, _mm256_set1_epi32((int32_t)(blk * BW + h * 8)));
      const __m256 b0 = _mm256_loadu_ps(b + 0 * BW), b1 = _mm256_loadu_ps(b + 1 * BW);
      const __m256 b2 = _mm256_loadu_ps(b + 2 * BW), b3 = _mm256_loadu_ps(b + 3 * BW);
      const __m256 b4 = _mm256_loadu_ps(b + 4 * BW), b5 = _mm256_loadu_ps(b + 5 * BW);
      const __m256 b6 = _mm256_loadu_ps(b + 6 * BW), b7 = _mm256_loadu_ps(b + 7 * BW);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const float* qr = q + r * 8;
        __m256 acc = _mm256_mul_ps(_mm256_broadcast_ss(qr + 0), b0);
        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(qr + 1), b1, acc);
        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(qr + 2), b2, acc);
        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(qr + 3), b3, acc);
        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(qr + 4), b4, acc);
        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(qr + 5), b5, acc);
        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(qr + 6), b6, acc);
        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(qr + 7), b7, acc);
        if (last) {
          const __m256i ok = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid_last - h * 8), lane);
          acc = _mm256_blendv_ps(ninf, acc, _mm256_castsi256_ps(ok));
        }
        const __m256 gt = _mm256_cmp_ps(acc, maxv[r][h], _CMP_GT_OQ);
        maxv[r][h] = _mm256_blendv_ps(maxv[r][h], acc, gt);
        maxi[r][h] = _mm256_castps_si256(
            _mm256_blendv_ps(_mm256_castsi256_ps(maxi[r][h]), _mm256_castsi256_ps(idx), gt));
      }
    }
  }
  alignas(32) float mv[BW];
  alignas(32) int32_t mi[BW];
  for (int r = 0; r < nr; ++r) {
    _mm256_store_ps(mv, maxv[r][0]);
    _mm256_store_ps(mv + 8, maxv[r][1]);
    _mm256_store_si256((__m256i*)mi, maxi[r][0]);
    _mm256_store_si256((__m256i*)(mi + 8), maxi[r][1]);
    finish_row(mv, mi, out + r);
  }
}

#ifndef MT_R512
#define MT_R512 8
#endif
#ifndef MT_R256
#define MT_R256 2
#endif

// Rows of one sub-codebook, R at a time (the last group zero padded, only nr rows written).
#define MT_ROWS_D8(NAME, TARGET, TILE, R)                                                   \
  TARGET void NAME(const float* f, int64_t rows, const float* pb, int64_t V, int64_t* out) { \
    const int64_t nblk = (V + BW - 1) / BW;                                                 \
    const int valid_last = (int)(V - (nblk - 1) * BW);                                      \
    alignas(64) float q[R * 8];                                                             \
    for (int64_t r0 = 0; r0 < rows; r0 += R) {                                              \
      const int nr = (int)std::min<int64_t>(R, rows - r0);                                  \
      std::memcpy(q, f + r0 * 8, sizeof(float) * nr * 8);                                   \
      if (nr < R) std::memset(q + nr * 8, 0, sizeof(float) * (R - nr) * 8);                 \
      TILE<R>(q, pb, nblk, valid_last, nr, out + r0);                                       \
    }                                                                                       \
  }
MT_ROWS_D8(rows8_avx512, MT_T512, tile512_d8, MT_R512)
MT_ROWS_D8(rows8_avx2, MT_T256, tile256_d8, MT_R256)
#endif  // x86

// Generic instantiations (any d; on x86 also compiled for AVX-512 / AVX2 so the compiler can
// vectorise the lane loops; the FMA order is the same everywhere).
#define MT_DEFINE_ISA(NAME, TARGET, R8, RG, W)                                              \
  TARGET void rows_##NAME(const float* f, int64_t rows, int d, const float* pb, int64_t V, \
                          int64_t* out) {                                                  \
    if (d == 8) search_rows<8, R8, W>(f, rows, d, pb, V, out);                             \
    else search_rows<0, RG, W>(f, rows, d, pb, V, out);                                    \
  }

#ifdef MT_X86_DISPATCH
MT_DEFINE_ISA(gen512, MT_T512, 6, 4, 16)
MT_DEFINE_ISA(gen256, MT_T256, 2, 2, 8)
void rows_avx512(const float* f, int64_t rows, int d, const float* pb, int64_t V, int64_t* out) {
  if (d == 8) rows8_avx512(f, rows, pb, V, out);
  else rows_gen512(f, rows, d, pb, V, out);
}
void rows_avx2(const float* f, int64_t rows, int d, const float* pb, int64_t V, int64_t* out) {
  if (d == 8) rows8_avx2(f, rows, pb, V, out);
  else rows_gen256(f, rows, d, pb, V, out);
}
#endif
MT_DEFINE_ISA(base, , 2, 2, 4)

using RowsFn = void (*)(const float*, int64_t, int, const float*, int64_t, int64_t*);

const char* g_isa_name = "base";

RowsFn pick_isa(const std::string& force) {
#ifdef MT_X86_DISPATCH
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (force == "gen512" && has512) { g_isa_name = "gen512"; return rows_gen512; }
  if (force == "gen256" && has2) { g_isa_name = "gen256"; return rows_gen256; }
  if ((force.empty() || force == "avx512") && has512) { g_isa_name = "avx512"; return rows_avx512; }
  if ((force.empty() || force == "avx512" || force == "avx2") && has2) { g_isa_name = "avx2"; return rows_avx2; }
#endif
  g_isa_name = "base";
  return rows_base;
}

RowsFn g_rows = nullptr;

RowsFn rows_fn() {
  if (!g_rows) g_rows = pick_isa("");
  return g_rows;
}

// Repack books [K,V,d] -> [K][nblk][d][16] (zero padded tail).
at::Tensor pack_books(const at::Tensor& books) {
  const int64_t K = books.size(0), V = books.size(1), d = books.size(2);
  const int64_t nblk = (V + BW - 1) / BW;
  at::Tensor packed = at::zeros({K, nblk, d, BW}, books.options());
  const float* src = books.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  at::parallel_for(0, K * nblk, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t kb = b0; kb < b1; ++kb) {
      const int64_t k = kb / nblk, blk = kb % nblk;
      const int64_t nv = std::min<int64_t>(BW, V - blk * BW);
      const float* s = src + (k * V + blk * BW) * d;
      float* o = dst + kb * d * BW;
      for (int64_t l = 0; l < nv; ++l)
        for (int64_t j = 0; j < d; ++j) o[j * BW + l] = s[l * d + j];
    }
  });
  return packed;
}

// Finite and small enough that no partial sum can overflow (|s| <= d * max|f| * max|b|).
bool safe_inputs(const at::Tensor& t, double* maxabs) {
  const float* p = t.data_ptr<float>();
  const int64_t n = t.numel();
  float m = 0.f;
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(p[i]);
    finite &= std::isfinite(a);
    m = a > m ? a : m;
  }
  *maxabs = m;
  return finite;
}

void check_args(const at::Tensor& f, const at::Tensor& books) {
  TORCH_CHECK(f.device().is_cpu() && books.device().is_cpu(), "nearest_codes: CPU tensors only");
  TORCH_CHECK(f.scalar_type() == at::kFloat && books.scalar_type() == at::kFloat,
              "nearest_codes: float32 inputs expected");
  TORCH_CHECK(f.dim() == 3 && books.dim() == 3, "nearest_codes: f [K,N,d] and books [K,V,d]");
  TORCH_CHECK(f.size(0) == books.size(0) && f.size(2) == books.size(2),
              "nearest_codes: K and d of f and books must match");
  TORCH_CHECK(books.size(1) >= 1 && books.size(1) < (int64_t(1) << 31) - BW,
              "nearest_codes: need 1 <= V < 2^31");
  TORCH_CHECK(f.size(2) >= 1 && f.size(2) <= 4096, "nearest_codes: need 1 <= d <= 4096");
}

// Returns (indices [K,N] int64, status): status 0 = computed; 1 = non-finite or possibly
// overflowing input, indices not computed (caller must use the reference).
std::tuple<at::Tensor, int64_t> nearest_codes_status(const at::Tensor& f_in, const at::Tensor& books_in) {
  check_args(f_in, books_in);
  const at::Tensor f = f_in.contiguous();
  const at::Tensor books = books_in.contiguous();
  const int64_t K = f.size(0), N = f.size(1), d = f.size(2), V = books.size(1);
  at::Tensor out = at::empty({K, N}, f.options().dtype(at::kLong));
  if (K == 0 || N == 0) return {out, 0};
  double mf = 0, mb = 0;
  const bool ok = safe_inputs(f, &mf) && safe_inputs(books, &mb);
  if (!ok || mf * mb * (double)d > 1e37) return {out, 1};
  const at::Tensor packed = pack_books(books);
  const float* fp = f.data_ptr<float>();
  const float* pb = packed.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  const int64_t nblk = packed.size(1);
  const RowsFn fn = rows_fn();
  // Tasks = (sub-codebook, tile of TILE rows). 64 rows x 4096 codes x d=8 ~ 4 MFLOP per task.
  const int64_t TILE = 64;
  const int64_t tiles = (N + TILE - 1) / TILE;
  at::parallel_for(0, K * tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t k = t / tiles, r0 = (t % tiles) * TILE;
      const int64_t rows = std::min<int64_t>(TILE, N - r0);
      fn(fp + (k * N + r0) * d, rows, (int)d, pb + k * nblk * d * BW, V, op + k * N + r0);
    }
  });
  return {out, 0};
}

at::Tensor nearest_codes(const at::Tensor& f, const at::Tensor& books) {
  auto res = nearest_codes_status(f, books);
  TORCH_CHECK(std::get<1>(res) == 0,
              "nearest_codes: non-finite or overflowing inputs; use the torch reference");
  return std::get<0>(res);
}

// The full score matrix [K,N,V] with exactly the kernel's arithmetic (first product, then
// FMAs in dim order), for bit-for-bit comparison with torch.bmm (tests and the wrapper's
// one-off probe of the BLAS's summation order). Codes in blocks of 16 from the packed layout,
// lane loops vectorised per instruction set like the search.
// CMP = false: write the scores to out; CMP = true: count the scores != out (returned).
template <int W, bool CMP>
MT_INLINE int64_t score_rows_impl(const float* __restrict f, int64_t rows, int d, const float* __restrict pb,
                                  int64_t V, float* __restrict out) {
  int64_t mismatches = 0;
  const int64_t nblk = (V + BW - 1) / BW;
  for (int64_t r = 0; r < rows; ++r) {
    const float* q = f + r * d;
    float* o = out + r * V;
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const float* b = pb + blk * (int64_t)d * BW;
      float acc[BW];
#pragma omp simd
      for (int l = 0; l < BW; ++l) acc[l] = q[0] * b[l];
      for (int j = 1; j < d; ++j) {
        const float qj = q[j];
#pragma omp simd
        for (int l = 0; l < BW; ++l) acc[l] = std::fma(qj, b[j * BW + l], acc[l]);
      }
      const int64_t nv = std::min<int64_t>(BW, V - blk * BW);
      if (CMP) {
        for (int64_t l = 0; l < nv; ++l) mismatches += o[blk * BW + l] != acc[l];
      } else {
        for (int64_t l = 0; l < nv; ++l) o[blk * BW + l] = acc[l];
      }
    }
  }
  return mismatches;
}

using ScoreFn = int64_t (*)(const float*, int64_t, int, const float*, int64_t, float*, bool);
#define MT_SCORE_FN(NAME, TARGET, W)                                                            \
  TARGET int64_t NAME(const float* f, int64_t rows, int d, const float* pb, int64_t V, float* out, \
                      bool cmp) {                                                               \
    return cmp ? score_rows_impl<W, true>(f, rows, d, pb, V, out)                               \
               : score_rows_impl<W, false>(f, rows, d, pb, V, out);                             \
  }
#ifdef MT_X86_DISPATCH
MT_SCORE_FN(score_rows_avx512, MT_T512, 16)
MT_SCORE_FN(score_rows_avx2, MT_T256, 8)
#endif
MT_SCORE_FN(score_rows_base, , 4)

// cmp == nullptr: return the scores; else count where cmp [K,N,V] differs (value compare).
int64_t scores_impl(const at::Tensor& f_in, const at::Tensor& books_in, at::Tensor* out_scores,
                    const at::Tensor* cmp) {
  check_args(f_in, books_in);
  const at::Tensor f = f_in.contiguous();
  const at::Tensor books = books_in.contiguous();
  const int64_t K = f.size(0), N = f.size(1), d = f.size(2), V = books.size(1);
  at::Tensor out;
  if (cmp) {
    TORCH_CHECK(cmp->device().is_cpu() && cmp->scalar_type() == at::kFloat && cmp->dim() == 3 &&
                    cmp->size(0) == K && cmp->size(1) == N && cmp->size(2) == V,
                "scores_mismatch: scores must be float32 [K, N, V]");
    out = cmp->contiguous();
  } else {
    out = at::empty({K, N, V}, f.options());
    *out_scores = out;
  }
  if (out.numel() == 0) return 0;
  const at::Tensor packed = pack_books(books);
  const int64_t nblk = packed.size(1);
  rows_fn();
  ScoreFn fn = score_rows_base;
#ifdef MT_X86_DISPATCH
  if (g_rows == rows_avx512) fn = score_rows_avx512;
  else if (g_rows == rows_avx2) fn = score_rows_avx2;
#endif
  const float* fp = f.data_ptr<float>();
  const float* pb = packed.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t TILE = 16;
  const int64_t tiles = (N + TILE - 1) / TILE;
  std::atomic<int64_t> mismatches{0};
  at::parallel_for(0, K * tiles, 1, [&](int64_t t0, int64_t t1) {
    int64_t local = 0;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t k = t / tiles, r0 = (t % tiles) * TILE;
      const int64_t rows = std::min<int64_t>(TILE, N - r0);
      local += fn(fp + (k * N + r0) * d, rows, (int)d, pb + k * nblk * d * BW, V,
                  op + (k * N + r0) * V, cmp != nullptr);
    }
    mismatches += local;
  });
  return mismatches.load();
}

at::Tensor scores_fma(const at::Tensor& f, const at::Tensor& books) {
  at::Tensor out;
  scores_impl(f, books, &out, nullptr);
  return out;
}

int64_t scores_mismatch(const at::Tensor& f, const at::Tensor& books, const at::Tensor& scores) {
  return scores_impl(f, books, nullptr, &scores);
}

std::string isa() {
  rows_fn();
  return g_isa_name;
}

// Testing: force an instruction set ("avx512", "avx2", "base"; "" = best available).
std::string set_isa(const std::string& name) {
  g_rows = pick_isa(name);
  return g_isa_name;
}

}  // namespace

#ifndef MT_NS
#define MT_NS meditok_fused
#endif
TORCH_LIBRARY(MT_NS, m) {
  m.def("nearest_codes(Tensor f, Tensor books) -> Tensor");
  m.def("nearest_codes_status(Tensor f, Tensor books) -> (Tensor, int)");
  m.def("scores_fma(Tensor f, Tensor books) -> Tensor");
  m.def("scores_mismatch(Tensor f, Tensor books, Tensor scores) -> int");
  m.def("isa() -> str", isa);
  m.def("set_isa(str name) -> str", set_isa);
}

TORCH_LIBRARY_IMPL(MT_NS, CPU, m) {
  m.impl("nearest_codes", nearest_codes);
  m.impl("nearest_codes_status", nearest_codes_status);
  m.impl("scores_fma", scores_fma);
  m.impl("scores_mismatch", scores_mismatch);
}
