// C API over detinfer::comm::Communicator: exceptions become return codes plus a per-thread
// message.
#include <memory>
#include <string>

#include "comm/allreduce.h"
#include "comm/allreduce_c.h"
#include "common/error.h"

struct detinfer_ar_comm {
  std::unique_ptr<detinfer::comm::Communicator> c;
};

namespace {
thread_local std::string g_last_error;

template <typename F>
int guarded(F&& f) {
  try {
    f();
    g_last_error.clear();
    return DETINFER_AR_OK;
  } catch (const std::exception& e) {
    g_last_error = e.what();
  } catch (...) {
    g_last_error = "unknown error";
  }
  return DETINFER_AR_ERROR;
}
}  // namespace

using detinfer::fail;
using namespace detinfer::comm;

extern "C" {

int detinfer_ar_create_from_env(detinfer_ar_comm** comm) {
  return guarded([&] {
    if (!comm) fail("detinfer_ar_create_from_env: comm is null");
    *comm = nullptr;
    auto c = Communicator::create_from_env();
    *comm = new detinfer_ar_comm{std::move(c)};
  });
}

int detinfer_ar_create_local(int ndev, const int* devices, detinfer_ar_comm** comms) {
  return guarded([&] {
    if (!devices || !comms || ndev <= 0) fail("detinfer_ar_create_local: need ndev > 0, devices and comms");
    auto cs = Communicator::create_local(std::vector<int>(devices, devices + ndev));
    for (int i = 0; i < ndev; ++i) comms[i] = new detinfer_ar_comm{std::move(cs[i])};
  });
}

int detinfer_ar_destroy(detinfer_ar_comm* comm) {
  return guarded([&] { delete comm; });
}

int detinfer_ar_all_reduce(detinfer_ar_comm* comm, const void* in, void* out, size_t count, int dtype, int order, int algo,
                           void* stream) {
  return guarded([&] {
    if (!comm) fail("detinfer_ar_all_reduce: comm is null");
    if (dtype < 0 || dtype > 2) fail("detinfer_ar_all_reduce: unknown dtype ", dtype);
    if (order < 0 || order > 1) fail("detinfer_ar_all_reduce: unknown order ", order);
    if (algo < 0 || algo > 4) fail("detinfer_ar_all_reduce: unknown algorithm ", algo);
    comm->c->all_reduce(in, out, count, static_cast<DataType>(dtype), static_cast<Order>(order), stream,
                        static_cast<Algo>(algo));
  });
}

int detinfer_ar_check(detinfer_ar_comm* comm) {
  return guarded([&] {
    if (!comm) fail("detinfer_ar_check: comm is null");
    comm->c->check();
  });
}

int detinfer_ar_synchronize(detinfer_ar_comm* comm, void* stream) {
  return guarded([&] {
    if (!comm) fail("detinfer_ar_synchronize: comm is null");
    comm->c->synchronize(stream);
  });
}

int detinfer_ar_rank(const detinfer_ar_comm* comm) { return comm ? comm->c->rank() : -1; }
int detinfer_ar_world_size(const detinfer_ar_comm* comm) { return comm ? comm->c->world_size() : -1; }
const char* detinfer_ar_last_error(void) { return g_last_error.c_str(); }

}  // extern "C"
