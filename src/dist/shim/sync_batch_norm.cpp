// Synchronised BatchNorm as a libtorch autograd function (docs/segmenter.md, "Synchronised
// BatchNorm"). tch has no custom autograd, and the backward pass of a BatchNorm whose
// statistics span the ranks needs two sums over the ranks in the middle of backpropagation,
// so this file defines the function in C++ and calls back into Rust for the sums.
//
// Forward, with M the number of values per channel over every rank:
//   mean = Σx / M, var = Σ(x − mean)² / M (two passes: exact in f32 inputs, f64 sums),
//   y = (x − mean) / sqrt(var + eps) · weight + bias,
//   running_mean ← (1 − m)·running_mean + m·mean, running_var ← (1 − m)·running_var + m·var·M/(M − 1).
// Backward (PyTorch's SyncBatchNorm), with dy summed over the ranks in the two means:
//   dx = (dy − mean(dy) − (x − mean)·invstd²·mean(dy·(x − mean))) · invstd · weight,
//   dweight = Σ dy·(x − mean)·invstd, dbias = Σ dy (this rank's; the trainer sums parameter
//   gradients over the ranks as for every parameter).
// A channel with a single value over all ranks (a pooled branch on a batch of one) has no
// variance: it is normalised with the running statistics, which it leaves unchanged, as the
// unsynchronised layer does.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" {
// Sums `len` doubles in place over the ranks. Returns 0, or non-zero after writing a
// NUL-terminated message of at most `capacity` bytes into `error`.
typedef int (*wsss_sum_fn)(void* context, double* values, int64_t len, char* error, int64_t capacity);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// `values` (f64, any device) summed over the ranks, on the device it came from.
at::Tensor sum_over_ranks(const at::Tensor& values, wsss_sum_fn sum, void* context) {
  at::Tensor host = values.to(at::kCPU, at::kDouble).contiguous().clone();
  char error[512] = {0};
  if (sum(context, host.data_ptr<double>(), host.numel(), error, sizeof error) != 0) {
    throw std::runtime_error(std::string("synchronised BatchNorm: ") + error);
  }
  return host.to(values.device());
}

// Every dimension but the channels (1).
std::vector<int64_t> reduced_dims(const at::Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  return dims;
}

// A per-channel vector shaped to broadcast against x: [1, C, 1, …].
at::Tensor per_channel(const at::Tensor& v, const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = x.size(1);
  return v.to(at::kFloat).view(shape);
}

struct SyncBatchNorm : public torch::autograd::Function<SyncBatchNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                            at::Tensor running_mean, at::Tensor running_var, double momentum, double eps, int64_t sum_fn,
                            int64_t sum_context) {
    auto sum = reinterpret_cast<wsss_sum_fn>(sum_fn);
    auto context = reinterpret_cast<void*>(sum_context);
    const at::Tensor x = input.to(at::kFloat);
    const int64_t channels = x.size(1);
    const auto dims = reduced_dims(x);
    const double local_count = channels == 0 ? 0.0 : static_cast<double>(x.numel() / channels);
    at::Tensor first = at::cat({x.sum(dims, false, at::kDouble), at::full({1}, local_count, x.options().dtype(at::kDouble))});
    first = sum_over_ranks(first, sum, context);
    const double count = first[channels].item<double>();
    ctx->saved_data["count"] = count;
    ctx->saved_data["sum_fn"] = sum_fn;
    ctx->saved_data["sum_context"] = sum_context;
    at::Tensor mean, invstd;
    if (count > 1.0) {
      mean = first.narrow(0, 0, channels) / count;
      const at::Tensor deviation = x - per_channel(mean, x);
      const at::Tensor var = sum_over_ranks((deviation * deviation).sum(dims, false, at::kDouble), sum, context) / count;
      invstd = (var + eps).rsqrt();
      running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.scalar_type()), momentum);
      running_var.mul_(1.0 - momentum).add_((var * (count / (count - 1.0))).to(running_var.scalar_type()), momentum);
    } else {
      mean = running_mean.to(at::kDouble);
      invstd = (running_var.to(at::kDouble) + eps).rsqrt();
    }
    const at::Tensor mean_f = mean.to(at::kFloat), invstd_f = invstd.to(at::kFloat);
    ctx->save_for_backward({input, weight, mean_f, invstd_f});
    const at::Tensor y = (x - per_channel(mean_f, x)) * per_channel(invstd_f * weight, x) + per_channel(bias, x);
    return y.to(input.scalar_type());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1], &mean = saved[2], &invstd = saved[3];
    const double count = ctx->saved_data["count"].toDouble();
    const at::Tensor x = input.to(at::kFloat);
    const at::Tensor dy = grad_outputs[0].to(at::kFloat);
    const auto dims = reduced_dims(x);
    const int64_t channels = x.size(1);
    const at::Tensor deviation = x - per_channel(mean, x);
    const at::Tensor sum_dy = dy.sum(dims, false, at::kDouble);
    const at::Tensor sum_dy_deviation = (dy * deviation).sum(dims, false, at::kDouble);
    const at::Tensor grad_weight = (sum_dy_deviation * invstd.to(at::kDouble)).to(weight.scalar_type());
    const at::Tensor grad_bias = sum_dy.to(weight.scalar_type());
    at::Tensor grad_input;
    if (count > 1.0) {
      auto sum = reinterpret_cast<wsss_sum_fn>(ctx->saved_data["sum_fn"].toInt());
      auto context = reinterpret_cast<void*>(ctx->saved_data["sum_context"].toInt());
      const at::Tensor sums = sum_over_ranks(at::cat({sum_dy, sum_dy_deviation}), sum, context) / count;
      const at::Tensor mean_dy = per_channel(sums.narrow(0, 0, channels), x);
      const at::Tensor mean_dy_deviation = per_channel(sums.narrow(0, channels, channels), x);
      const at::Tensor invstd_c = per_channel(invstd, x);
      grad_input = (dy - mean_dy - deviation * invstd_c * invstd_c * mean_dy_deviation) * per_channel(invstd * weight, x);
    } else {
      grad_input = dy * per_channel(invstd * weight, x);
    }
    return {grad_input.to(input.scalar_type()), grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

char* copy_message(const char* message) {
  const size_t length = std::strlen(message);
  char* copy = static_cast<char*>(std::malloc(length + 1));
  if (copy != nullptr) std::memcpy(copy, message, length + 1);
  return copy;
}

}  // namespace

extern "C" {

// y = SyncBatchNorm(input) into *output. Returns null, or an error message to be released with
// wsss_free_message.
char* wsss_sync_batch_norm(const at::Tensor* input, const at::Tensor* weight, const at::Tensor* bias,
                           const at::Tensor* running_mean, const at::Tensor* running_var, double momentum, double eps,
                           wsss_sum_fn sum, void* context, at::Tensor** output) {
  try {
    at::Tensor y = SyncBatchNorm::apply(*input, *weight, *bias, *running_mean, *running_var, momentum, eps,
                                        reinterpret_cast<int64_t>(sum), reinterpret_cast<int64_t>(context));
    *output = new at::Tensor(std::move(y));
    return nullptr;
  } catch (const std::exception& e) {
    return copy_message(e.what());
  }
}

void wsss_free_message(char* message) { std::free(message); }

}
