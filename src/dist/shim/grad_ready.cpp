// Gradient-readiness hooks for the overlapped all-reduce (docs/architecture.md, "Overlapped
// gradient all-reduce"). tch exposes no autograd hooks; this file sets libtorch's
// post-accumulate-grad hook on a parameter: it runs right after backward has accumulated the
// parameter's gradient (into its bucket slot), once per backward pass, and calls back into Rust
// with the parameter's index, which launches the bucket's all-reduce once all of its
// gradients are in.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>

extern "C" {
// Called with the parameter's index. Returns 0, or non-zero after writing a NUL-terminated
// message of at most `capacity` bytes into `error`.
typedef int (*wsss_ready_fn)(const void* context, int64_t index, char* error, int64_t capacity);
}

namespace {

struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  ReadyHook(wsss_ready_fn ready, const void* context, int64_t index) : ready(ready), context(context), index(index) {}

  void operator()(const torch::autograd::Variable& /*param*/) override {
    char error[512] = {0};
    if (ready(context, index, error, sizeof error) != 0) {
      // Thrown into the autograd engine: backward() fails with this message.
      throw std::runtime_error(std::string("gradient all-reduce: ") + error);
    }
  }

  wsss_ready_fn ready;
  const void* context;
  int64_t index;
};

// Writes `what` into `error` (at most `capacity` bytes with the NUL) and returns 1.
int fail(const char* what, char* error, int64_t capacity) {
  std::snprintf(error, static_cast<size_t>(capacity), "%s", what);
  return 1;
}

}  // namespace

extern "C" {

// Sets (ready != null) or removes (ready == null) the readiness hook of a leaf tensor that
// requires grad, replacing any earlier one. Returns 0, or 1 with the reason in `error`.
int wsss_set_grad_ready_hook(const at::Tensor* param, wsss_ready_fn ready, const void* context, int64_t index,
                             char* error, int64_t capacity) {
  try {
    if (!param->requires_grad() || !param->is_leaf()) {
      return fail("the tensor is not a leaf that requires grad", error, capacity);
    }
    std::unique_ptr<torch::autograd::PostAccumulateGradHook> hook;
    if (ready != nullptr) hook = std::make_unique<ReadyHook>(ready, context, index);
    torch::autograd::impl::set_post_acc_grad_hooks(*param, std::move(hook));
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), error, capacity);
  }
}

}
