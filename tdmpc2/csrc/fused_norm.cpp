// Fused LayerNorm + affine + activation kernels for float32 CPU tensors, the normalised blocks of
// every TD-MPC2 network:
//   norm_mish*     Mish(LayerNorm(x) * w + b), the hidden block of every MLP and of the Q ensemble;
//                  x is (G, M, H) contiguous with weight/bias (G, 1, H) (one affine per ensemble
//                  member) or (1, 1, H) (shared).
//   norm_simnorm*  SimNorm(LayerNorm(x) * w + b), the last block of the encoder and the dynamics:
//                  a softmax inside consecutive groups of `group` features; x is (R, H), weight and
//                  bias (H,).
// Each row is handled while it sits in L1: its mean and variance, then the normalised value, the
// affine and the activation (and, for training, what the backward pass needs). Loops are plain
// arithmetic so that the compiler vectorises them; exp is a Cody-Waite reduction plus a degree-6
// polynomial (Cephes expf, about 1 ulp). Built at first use by tdmpc2/native.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

namespace {

constexpr float kMishClamp = 20.0f;

// exp(x) for x <= kMishClamp; inputs below -87 give exp(-87) (Mish is 0 there to float precision).
// NaN stays NaN: every comparison is written so that it lets NaN through.
inline float exp_small(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float t = x * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2^23: t - 1.5 * 2^23 is x / ln 2 rounded
  const float n = t - 12582912.0f;
  const int32_t ni = __builtin_bit_cast(int32_t, t) - 0x4B400000;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * __builtin_bit_cast(float, (ni + 127) << 23);
}

// Mish(p) and its derivative, with n = e^p (e^p + 2): Mish = p n / (n + 2).
inline void mish_and_derivative(float p, float& y, float& dy) {
  const float e = exp_small(p > kMishClamp ? kMishClamp : p);
  const float n = e * (e + 2.0f);
  const float d = n + 2.0f;
  const float r = 1.0f / d;
  y = p * n * r;
  dy = (n * d + 4.0f * p * e * (e + 1.0f)) * (r * r);
}

inline float mish(float p) {
  const float e = exp_small(p > kMishClamp ? kMishClamp : p);
  const float n = e * (e + 2.0f);
  return p * n / (n + 2.0f);
}

// Row statistics of LayerNorm: mean and 1/sqrt(var + eps), two passes over a row held in L1.
inline void row_stats(const float* x, int64_t h, float eps, float& mean, float& rstd) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < h; ++i) s += x[i];
  mean = s / static_cast<float>(h);
  float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
  for (int64_t i = 0; i < h; ++i) {
    const float c = x[i] - mean;
    ss += c * c;
  }
  rstd = 1.0f / std::sqrt(ss / static_cast<float>(h) + eps);
}

struct Layout {
  int64_t rows, h, rows_per_group;
};

Layout check(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const char* what) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() == 3,
              what, ": expects a contiguous float32 CPU tensor (G, M, H), got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(w.is_contiguous() && b.is_contiguous() && w.dim() == 3 && w.size(1) == 1 && w.size(2) == x.size(2) &&
              w.sizes() == b.sizes() && (w.size(0) == x.size(0) || w.size(0) == 1),
              what, ": weight and bias must be contiguous (G, 1, H) or (1, 1, H), got ", w.sizes(), " and ", b.sizes());
  const int64_t rows = x.size(0) * x.size(1);
  const int64_t groups = w.size(0);
  return {rows, x.size(2), groups == 1 ? rows : x.size(1)};
}

// Forward of rows [begin, end): y = Mish(xhat * w + b). For training (dy given) also Mish's
// derivative at the pre-activation and each row's (mean, rstd) in stats; the backward pass
// recomputes the normalised input from x and these statistics rather than have the forward pass
// write it (a third full-size array).
void norm_mish_rows(const float* xp, const float* wp, const float* bp, float eps, const Layout& l, int64_t begin,
                    int64_t end, float* yp, float* dp, float* sp) {
  const int64_t h = l.h;
  for (int64_t r = begin; r < end; ++r) {
    const float* xr = xp + r * h;
    const float* wr = wp + (r / l.rows_per_group) * h;
    const float* br = bp + (r / l.rows_per_group) * h;
    float* yr = yp + r * h;
    float mean, rs;
    row_stats(xr, h, eps, mean, rs);
    if (dp == nullptr) {
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) yr[i] = mish((xr[i] - mean) * rs * wr[i] + br[i]);
      continue;
    }
    float* dr = dp + r * h;
    sp[2 * r] = mean;
    sp[2 * r + 1] = rs;
#pragma omp simd
    for (int64_t i = 0; i < h; ++i) mish_and_derivative((xr[i] - mean) * rs * wr[i] + br[i], yr[i], dr[i]);
  }
}

at::Tensor norm_mish(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  const Layout l = check(x, w, b, "norm_mish");
  at::Tensor y = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, l.rows, 16, [&](int64_t begin, int64_t end) {
    norm_mish_rows(xp, wp, bp, static_cast<float>(eps), l, begin, end, yp, nullptr, nullptr);
  });
  return y;
}

// Training forward: y, Mish's derivative and the row statistics (see norm_mish_rows).
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_mish_train(
    const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  const Layout l = check(x, w, b, "norm_mish_train");
  at::Tensor y = at::empty_like(x), dy = at::empty_like(x);
  at::Tensor stats = at::empty({x.size(0), x.size(1), 2}, x.options());
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *dp = dy.data_ptr<float>(), *sp = stats.data_ptr<float>();
  at::parallel_for(0, l.rows, 16, [&](int64_t begin, int64_t end) {
    norm_mish_rows(xp, wp, bp, static_cast<float>(eps), l, begin, end, yp, dp, sp);
  });
  return {y, dy, stats};
}

// Gradients of one row. Input: LayerNorm backward, rstd * (g - mean(g) - xhat * mean(g * xhat)),
// with g = grad * mish'(pre) * weight the gradient at the normalised input xhat = (x - mean) * rstd.
// Parameters (when aw is given): aw += grad * mish'(pre) * xhat, ab += grad * mish'(pre).
inline void row_backward(const float* g, const float* d, const float* x, float mean, float rs, const float* w,
                         int64_t h, float* gx, float* aw, float* ab) {
  float m1 = 0.0f, m2 = 0.0f;
#pragma omp simd reduction(+ : m1, m2)
  for (int64_t i = 0; i < h; ++i) {
    const float gxh = g[i] * d[i] * w[i];
    m1 += gxh;
    m2 += gxh * ((x[i] - mean) * rs);
  }
  m1 /= static_cast<float>(h);
  m2 /= static_cast<float>(h);
#pragma omp simd
  for (int64_t i = 0; i < h; ++i) gx[i] = rs * (g[i] * d[i] * w[i] - m1 - ((x[i] - mean) * rs) * m2);
  if (aw != nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < h; ++i) {
      const float gpre = g[i] * d[i];
      aw[i] += gpre * ((x[i] - mean) * rs);
      ab[i] += gpre;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_mish_backward(
    const at::Tensor& grad_in, const at::Tensor& dy, const at::Tensor& x, const at::Tensor& stats,
    const at::Tensor& w, bool param_grads) {
  const at::Tensor grad = grad_in.contiguous();
  const Layout l = check(x, w, w, "norm_mish_backward");
  TORCH_CHECK(grad.sizes() == x.sizes() && dy.sizes() == x.sizes() && dy.is_contiguous() && stats.is_contiguous() &&
              stats.numel() == 2 * l.rows,
              "norm_mish_backward: gradient and saved tensors must match, got ", grad.sizes(), " and ", x.sizes());
  at::Tensor gx = at::empty_like(x);
  const int64_t h = l.h, groups = w.size(0);
  // Parameter gradients: each thread sums its rows, then adds its sums under a lock.
  at::Tensor gw = at::zeros_like(w), gb = at::zeros_like(w);
  const float *gp = grad.data_ptr<float>(), *dp = dy.data_ptr<float>(), *xp = x.data_ptr<float>();
  const float *sp = stats.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* gxp = gx.data_ptr<float>();
  float *gwp = gw.data_ptr<float>(), *gbp = gb.data_ptr<float>();
  std::mutex lock;
  at::parallel_for(0, l.rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> acc_w, acc_b;
    if (param_grads) {
      acc_w.assign(groups * h, 0.0f);
      acc_b.assign(groups * h, 0.0f);
    }
    for (int64_t r = begin; r < end; ++r) {
      const int64_t g = r / l.rows_per_group;
      row_backward(gp + r * h, dp + r * h, xp + r * h, sp[2 * r], sp[2 * r + 1], wp + g * h, h, gxp + r * h,
                   param_grads ? acc_w.data() + g * h : nullptr, param_grads ? acc_b.data() + g * h : nullptr);
    }
    if (param_grads) {
      std::lock_guard<std::mutex> guard(lock);
      for (int64_t i = 0; i < groups * h; ++i) {
        gwp[i] += acc_w[i];
        gbp[i] += acc_b[i];
      }
    }
  });
  return {gx, gw, gb};
}

// ---------------------------------------------------------------------------------------------
// LayerNorm + affine + SimNorm

void check_simnorm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t group, const char* what) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() == 2,
              what, ": expects a contiguous float32 CPU tensor (R, H), got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(w.is_contiguous() && b.is_contiguous() && w.dim() == 1 && w.sizes() == b.sizes() && w.size(0) == x.size(1),
              what, ": weight and bias must be contiguous (H,), got ", w.sizes(), " and ", b.sizes());
  TORCH_CHECK(group > 0 && x.size(1) % group == 0, what, ": ", x.size(1), " features do not split into groups of ", group);
}

// Softmax of v inside each group, written to y; `scratch` holds H floats.
inline void group_softmax(const float* v, int64_t h, int64_t group, float* scratch, float* y) {
  for (int64_t g = 0; g < h; g += group) {  // each element's shift: the maximum of its group
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = g; i < g + group; ++i) m = v[i] > m ? v[i] : m;
    for (int64_t i = g; i < g + group; ++i) scratch[i] = m;
  }
#pragma omp simd
  for (int64_t i = 0; i < h; ++i) y[i] = exp_small(v[i] - scratch[i]);
  for (int64_t g = 0; g < h; g += group) {
    float s = 0.0f;
    for (int64_t i = g; i < g + group; ++i) s += y[i];
    const float inv = 1.0f / s;
    for (int64_t i = g; i < g + group; ++i) y[i] *= inv;
  }
}

// Forward of rows [begin, end): y = SimNorm(xhat * w + b); xhat and rstd are stored when given.
void norm_simnorm_rows(const float* xp, const float* wp, const float* bp, float eps, int64_t h, int64_t group,
                       int64_t begin, int64_t end, float* yp, float* hp, float* sp) {
  std::vector<float> v(h), scratch(h);
  for (int64_t r = begin; r < end; ++r) {
    const float* xr = xp + r * h;
    float mean, rs;
    row_stats(xr, h, eps, mean, rs);
#pragma omp simd
    for (int64_t i = 0; i < h; ++i) v[i] = (xr[i] - mean) * rs;
    if (hp != nullptr) {
      std::memcpy(hp + r * h, v.data(), h * sizeof(float));
      sp[r] = rs;
    }
#pragma omp simd
    for (int64_t i = 0; i < h; ++i) v[i] = v[i] * wp[i] + bp[i];
    group_softmax(v.data(), h, group, scratch.data(), yp + r * h);
  }
}

at::Tensor norm_simnorm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps, int64_t group) {
  check_simnorm(x, w, b, group, "norm_simnorm");
  at::Tensor y = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, x.size(0), 16, [&](int64_t begin, int64_t end) {
    norm_simnorm_rows(xp, wp, bp, static_cast<float>(eps), x.size(1), group, begin, end, yp, nullptr, nullptr);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_simnorm_train(
    const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps, int64_t group) {
  check_simnorm(x, w, b, group, "norm_simnorm_train");
  at::Tensor y = at::empty_like(x), xhat = at::empty_like(x), rstd = at::empty({x.size(0), 1}, x.options());
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *hp = xhat.data_ptr<float>(), *sp = rstd.data_ptr<float>();
  at::parallel_for(0, x.size(0), 16, [&](int64_t begin, int64_t end) {
    norm_simnorm_rows(xp, wp, bp, static_cast<float>(eps), x.size(1), group, begin, end, yp, hp, sp);
  });
  return {y, xhat, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_simnorm_backward(
    const at::Tensor& grad_in, const at::Tensor& y, const at::Tensor& xhat, const at::Tensor& rstd,
    const at::Tensor& w, int64_t group, bool param_grads) {
  const at::Tensor grad = grad_in.contiguous();
  check_simnorm(xhat, w, w, group, "norm_simnorm_backward");
  TORCH_CHECK(grad.sizes() == xhat.sizes() && y.sizes() == xhat.sizes() && y.is_contiguous() && rstd.is_contiguous(),
              "norm_simnorm_backward: gradient and saved tensors must match, got ", grad.sizes(), " and ", xhat.sizes());
  const int64_t h = xhat.size(1);
  at::Tensor gx = at::empty_like(xhat), gw = at::zeros_like(w), gb = at::zeros_like(w);
  const float *gp = grad.data_ptr<float>(), *yp = y.data_ptr<float>(), *hp = xhat.data_ptr<float>();
  const float *sp = rstd.data_ptr<float>(), *wp = w.data_ptr<float>();
  float *gxp = gx.data_ptr<float>(), *gwp = gw.data_ptr<float>(), *gbp = gb.data_ptr<float>();
  std::mutex lock;
  at::parallel_for(0, xhat.size(0), 16, [&](int64_t begin, int64_t end) {
    std::vector<float> gs(h), acc_w(param_grads ? h : 0, 0.0f), acc_b(param_grads ? h : 0, 0.0f);
    for (int64_t r = begin; r < end; ++r) {
      const float *gr = gp + r * h, *yr = yp + r * h, *hr = hp + r * h;
      // Softmax backward inside each group: y * (g - sum(g * y)).
      for (int64_t g = 0; g < h; g += group) {
        float dot = 0.0f;
        for (int64_t i = g; i < g + group; ++i) dot += gr[i] * yr[i];
        for (int64_t i = g; i < g + group; ++i) gs[i] = yr[i] * (gr[i] - dot);
      }
      if (param_grads) {
#pragma omp simd
        for (int64_t i = 0; i < h; ++i) {
          acc_w[i] += gs[i] * hr[i];
          acc_b[i] += gs[i];
        }
      }
      float m1 = 0.0f, m2 = 0.0f;
#pragma omp simd reduction(+ : m1, m2)
      for (int64_t i = 0; i < h; ++i) {
        const float gxh = gs[i] * wp[i];
        m1 += gxh;
        m2 += gxh * hr[i];
      }
      m1 /= static_cast<float>(h);
      m2 /= static_cast<float>(h);
      const float rs = sp[r];
      float* gxr = gxp + r * h;
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) gxr[i] = rs * (gs[i] * wp[i] - m1 - hr[i] * m2);
    }
    if (param_grads) {
      std::lock_guard<std::mutex> guard(lock);
      for (int64_t i = 0; i < h; ++i) {
        gwp[i] += acc_w[i];
        gbp[i] += acc_b[i];
      }
    }
  });
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY(tdmpc2_native, m) {
  m.def("norm_mish(Tensor x, Tensor weight, Tensor bias, float eps) -> Tensor");
  m.def("norm_mish_train(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("norm_mish_backward(Tensor grad, Tensor derivative, Tensor x, Tensor stats, Tensor weight, bool param_grads) -> (Tensor, Tensor, Tensor)");
  m.def("norm_simnorm(Tensor x, Tensor weight, Tensor bias, float eps, int group) -> Tensor");
  m.def("norm_simnorm_train(Tensor x, Tensor weight, Tensor bias, float eps, int group) -> (Tensor, Tensor, Tensor)");
  m.def("norm_simnorm_backward(Tensor grad, Tensor y, Tensor xhat, Tensor rstd, Tensor weight, int group, bool param_grads) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tdmpc2_native, CPU, m) {
  m.impl("norm_mish", &norm_mish);
  m.impl("norm_mish_train", &norm_mish_train);
  m.impl("norm_mish_backward", &norm_mish_backward);
  m.impl("norm_simnorm", &norm_simnorm);
  m.impl("norm_simnorm_train", &norm_simnorm_train);
  m.impl("norm_simnorm_backward", &norm_simnorm_backward);
}
