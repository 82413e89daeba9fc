// Collectives between processes through PyTorch's c10d: a TCPStore for the rendezvous and a
// Gloo process group for all-reduce, broadcast and barrier (CPU tensors, and CUDA tensors,
// copied through the host). Everything that runs is libtorch's own code; this file
// only builds the group from (address, port, rank, world size) and flattens a list of tensors
// into one buffer per call.
//
// Every entry point returns 0 on success and 1 when c10d raised, with the message written to
// `error` (NUL-terminated, truncated to `error_len`); nothing is thrown across the C boundary.

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
};

void write_error(const std::string& message, char* error, size_t error_len) {
  if (error == nullptr || error_len == 0) {
    return;
  }
  const size_t n = std::min(message.size(), error_len - 1);
  std::memcpy(error, message.data(), n);
  error[n] = '\0';
}

template <typename F>
int guarded(F&& body, char* error, size_t error_len) {
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    write_error(e.what_without_backtrace(), error, error_len);
  } catch (const std::exception& e) {
    write_error(e.what(), error, error_len);
  } catch (...) {
    write_error("unknown C++ exception", error, error_len);
  }
  return 1;
}

bool is_loopback(const std::string& address) {
  return address == "localhost" || address.rfind("127.", 0) == 0 || address == "::1";
}

// The tensors as one flat host buffer (one collective instead of one per tensor; CUDA tensors
// are copied to the host and back, which works whether or not libtorch's Gloo was built with
// CUDA): all must share a dtype and a device.
at::Tensor flatten(at::Tensor** tensors, size_t n) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> flat;
  flat.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& t = *tensors[i];
    TORCH_CHECK(t.scalar_type() == tensors[0]->scalar_type(),
                "collectives: every tensor of one call must have the same dtype");
    TORCH_CHECK(t.device() == tensors[0]->device(),
                "collectives: every tensor of one call must be on the same device");
    flat.push_back(t.reshape({-1}));
  }
  return at::cat(flat).to(at::kCPU);
}

void unflatten(const at::Tensor& flat, at::Tensor** tensors, size_t n) {
  // The tensors may be a model's trainable variables: written in place, outside autograd.
  at::NoGradGuard no_grad;
  int64_t offset = 0;
  for (size_t i = 0; i < n; ++i) {
    at::Tensor& t = *tensors[i];
    const int64_t len = t.numel();
    t.copy_(flat.narrow(0, offset, len).view(t.sizes()));
    offset += len;
  }
}

}  // namespace

extern "C" void* dp_collectives_connect(const char* address, int port, int rank, int world_size,
                                        int64_t timeout_ms, char* error, size_t error_len) {
  Group* group = nullptr;
  const int status = guarded(
      [&] {
        const std::chrono::milliseconds timeout(timeout_ms);
        c10d::TCPStoreOptions options;
        options.port = static_cast<std::uint16_t>(port);
        // Under torchrun the launcher's agent already serves the store on MASTER_PORT.
        const char* agent_store = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
        options.isServer = rank == 0 && !(agent_store && std::string(agent_store) == "True");
        options.numWorkers = static_cast<size_t>(world_size);
        options.timeout = timeout;
        auto store = c10::make_intrusive<c10d::TCPStore>(std::string(address), options);
        auto gloo_options = c10d::ProcessGroupGloo::Options::create(timeout);
        // As torch.distributed does: the interface GLOO_SOCKET_IFNAME names, else the loopback
        // when the rendezvous is on this machine, else the address this host's name resolves to.
        if (const char* interface = std::getenv("GLOO_SOCKET_IFNAME")) {
          gloo_options->devices.push_back(
              c10d::ProcessGroupGloo::createDeviceForInterface(interface));
        } else if (is_loopback(address)) {
          gloo_options->devices.push_back(
              c10d::ProcessGroupGloo::createDeviceForHostname(address));
        } else {
          gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        }
        auto gloo =
            c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, gloo_options);
        group = new Group{std::move(store), std::move(gloo)};
      },
      error, error_len);
  return status == 0 ? group : nullptr;
}

namespace {

// Runs `op` on the group and the tensors as one flat buffer, then writes the result back.
template <typename Op>
int on_flat(void* group, at::Tensor** tensors, size_t n, Op op, char* error, size_t error_len) {
  return guarded(
      [&] {
        if (n == 0) {
          return;
        }
        std::vector<at::Tensor> flat{flatten(tensors, n)};
        op(*static_cast<Group*>(group)->gloo, flat)->wait();
        unflatten(flat[0], tensors, n);
      },
      error, error_len);
}

}  // namespace

extern "C" int dp_collectives_all_reduce_sum(void* group, at::Tensor** tensors, size_t n,
                                             char* error, size_t error_len) {
  auto op = [](c10d::ProcessGroupGloo& gloo, std::vector<at::Tensor>& flat) {
    return gloo.allreduce(flat);
  };
  return on_flat(group, tensors, n, op, error, error_len);
}

extern "C" int dp_collectives_broadcast(void* group, at::Tensor** tensors, size_t n, int root,
                                        char* error, size_t error_len) {
  auto op = [root](c10d::ProcessGroupGloo& gloo, std::vector<at::Tensor>& flat) {
    c10d::BroadcastOptions options;
    options.rootRank = root;
    return gloo.broadcast(flat, options);
  };
  return on_flat(group, tensors, n, op, error, error_len);
}

extern "C" int dp_collectives_barrier(void* group, char* error, size_t error_len) {
  return guarded([&] { static_cast<Group*>(group)->gloo->barrier()->wait(); }, error, error_len);
}

extern "C" void dp_collectives_free(void* group) {
  try {
    delete static_cast<Group*>(group);
  } catch (...) {
  }
}
