// maskflow's C++ shim over libtorch for what tch does not expose:
//  - autocast on any device type (tch's `autocast` switches CUDA's only), for bf16 mixed precision;
//  - c10d process groups (gloo) for data-parallel training: init from a file or TCP store,
//    broadcast, all-reduce (sum), barrier.
// Every function catches C++ exceptions and returns a status; the message is kept per thread for
// `mf_last_error`. Tensors cross as tch's `C_tensor*`, which is an `at::Tensor*`.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace {

thread_local std::string last_error;

template <typename F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return -1;
}

c10::DeviceType device_type(int cuda) { return cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU; }

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

std::vector<at::Tensor> tensors_of(at::Tensor** ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; ++i) v.push_back(*ts[i]);
  return v;
}

} // namespace

extern "C" {

const char* mf_last_error() { return last_error.c_str(); }

// ---- autocast ----

// Enters an autocast region on `cuda ? CUDA : CPU` with `scalar_type` (c10::ScalarType's number);
// the previous state goes to *prev_enabled / *prev_type for mf_autocast_exit.
int mf_autocast_enter(int cuda, int scalar_type, int* prev_enabled, int* prev_type) {
  return guarded([&] {
    auto dt = device_type(cuda);
    *prev_enabled = at::autocast::is_autocast_enabled(dt) ? 1 : 0;
    *prev_type = static_cast<int>(at::autocast::get_autocast_dtype(dt));
    at::autocast::set_autocast_enabled(dt, true);
    at::autocast::set_autocast_dtype(dt, static_cast<c10::ScalarType>(scalar_type));
    at::autocast::increment_nesting();
  });
}

// Leaves the region: restores the previous state; the outermost exit clears the cache of cast
// weights, as torch.autocast does.
int mf_autocast_exit(int cuda, int prev_enabled, int prev_type) {
  return guarded([&] {
    auto dt = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(dt, prev_enabled != 0);
    at::autocast::set_autocast_dtype(dt, static_cast<c10::ScalarType>(prev_type));
  });
}

// ---- c10d ----

// A gloo process group. The store is a file (`file_path` non-empty: a FileStore shared by the ranks
// on one machine) or TCP (`host`:`port`; rank 0 serves it unless `tcp_server` is 0, as under
// torchrun, whose agent already serves one). `iface` non-empty names the network interface gloo
// binds (else GLOO_SOCKET_IFNAME or the host name, as torch.distributed does). `prefix` separates
// groups that share a store.
int mf_pg_gloo_new(const char* file_path, const char* host, int port, int tcp_server, const char* iface,
                   const char* prefix, int rank, int world, int64_t timeout_ms, void** out) {
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::Store> store;
    if (file_path && *file_path) {
      store = c10::make_intrusive<c10d::FileStore>(std::string(file_path), world);
    } else {
      c10d::TCPStoreOptions o;
      o.port = static_cast<std::uint16_t>(port);
      o.isServer = tcp_server != 0 && rank == 0;
      o.numWorkers = world;
      o.waitWorkers = false;
      o.timeout = timeout;
      store = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
    }
    store->setTimeout(timeout);
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    if (iface && *iface) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(std::string(iface)));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    opts->threads = 1;
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, world, opts);
    *out = new Group{store, pg};
  });
}

void mf_pg_free(void* g) { delete static_cast<Group*>(g); }

// One collective per tensor (gloo reads a list as one tensor per device, all of one shape); the
// Rust side packs many small tensors into flat buckets first.
int mf_pg_broadcast(void* g, at::Tensor** ts, int n, int root) {
  return guarded([&] {
    c10d::BroadcastOptions o;
    o.rootRank = root;
    for (auto& t : tensors_of(ts, n)) {
      std::vector<at::Tensor> one{t};
      static_cast<Group*>(g)->backend->broadcast(one, o)->wait();
    }
  });
}

int mf_pg_allreduce_sum(void* g, at::Tensor** ts, int n) {
  return guarded([&] {
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    for (auto& t : tensors_of(ts, n)) {
      std::vector<at::Tensor> one{t};
      static_cast<Group*>(g)->backend->allreduce(one, o)->wait();
    }
  });
}

int mf_pg_barrier(void* g) {
  return guarded([&] { static_cast<Group*>(g)->backend->barrier(c10d::BarrierOptions())->wait(); });
}

} // extern "C"
