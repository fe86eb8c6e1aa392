// A tiny TCP key-value store for bootstrapping one process per GPU (the role torchrun's
// TCPStore plays): rank 0 serves on MASTER_ADDR:MASTER_PORT, every rank (0 included) is a
// client. It carries a few hundred bytes per rank at start-up (CUDA IPC handles, device
// identities, the NCCL unique id), so it favours simplicity over speed: one thread per client.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace detinfer::comm {

class StoreServer {
 public:
  // Listens on addr:port (addr may be a host name; "" or "0.0.0.0" listens everywhere).
  // port 0 picks a free port (see port()).
  StoreServer(const std::string& addr, int port);
  ~StoreServer();
  int port() const { return port_; }

 private:
  void accept_loop();
  void serve(int fd);

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<uint8_t>> data_;
  std::vector<std::thread> clients_;
  std::vector<int> client_fds_;
};

class StoreClient {
 public:
  // Connects, retrying until timeout_ms has passed (the server may start later).
  StoreClient(const std::string& addr, int port, int64_t timeout_ms);
  ~StoreClient();
  StoreClient(const StoreClient&) = delete;
  StoreClient& operator=(const StoreClient&) = delete;

  void set(const std::string& key, const std::vector<uint8_t>& value);
  // Waits until the key exists; throws Error after timeout_ms.
  std::vector<uint8_t> get(const std::string& key, int64_t timeout_ms);
  // Adds delta to a 64-bit counter (created at 0) and returns the new value.
  int64_t add(const std::string& key, int64_t delta);
  // Returns once `count` callers have entered the barrier of this name (or throws on timeout).
  void barrier(const std::string& name, int count, int64_t timeout_ms);

 private:
  std::vector<uint8_t> request(uint8_t op, const std::string& key, const std::vector<uint8_t>& value,
                               int64_t timeout_ms);
  int fd_ = -1;
  std::mutex mu_;
};

// Gathers one blob per rank: every rank sets key/<rank> and reads all of them.
std::vector<std::vector<uint8_t>> store_all_gather(StoreClient& store, const std::string& key, int rank,
                                                   int world, const std::vector<uint8_t>& mine,
                                                   int64_t timeout_ms);

}  // namespace detinfer::comm
