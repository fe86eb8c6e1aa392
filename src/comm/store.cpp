#include "comm/store.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "common/error.h"

namespace detinfer::comm {
namespace {

enum Op : uint8_t { kSet = 1, kGet = 2, kAdd = 3 };
constexpr uint32_t kMaxKey = 4096;
constexpr uint64_t kMaxValue = 64u << 20;  // a store message is never large; refuse nonsense

bool write_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::send(fd, c, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool read_all(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t r = ::recv(fd, c, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

addrinfo* resolve(const std::string& addr, int port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  std::string service = std::to_string(port);
  const char* host = (addr.empty() || (passive && addr == "0.0.0.0")) ? nullptr : addr.c_str();
  int rc = ::getaddrinfo(host, service.c_str(), &hints, &res);
  if (rc != 0 || !res) fail("store: cannot resolve address '", addr, ":", port, "': ", gai_strerror(rc));
  return res;
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

StoreServer::StoreServer(const std::string& addr, int port) {
  addrinfo* res = resolve(addr, port, true);
  std::string last_err = "no address";
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 128) == 0) {
      listen_fd_ = fd;
      break;
    }
    last_err = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(res);
  if (listen_fd_ < 0) fail("store: cannot listen on ", addr, ":", port, ": ", last_err);
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  port_ = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                   : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  acceptor_ = std::thread([this] { accept_loop(); });
}

StoreServer::~StoreServer() {
  stopping_ = true;
  ::shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  ::close(listen_fd_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int fd : client_fds_) ::shutdown(fd, SHUT_RDWR);
  }
  cv_.notify_all();
  for (auto& t : clients_) t.join();
  for (int fd : client_fds_) ::close(fd);
}

void StoreServer::accept_loop() {
  while (!stopping_) {
    pollfd pfd{listen_fd_, POLLIN, 0};
    int pr = ::poll(&pfd, 1, 100);
    if (pr <= 0) continue;
    int fd = ::accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      ::close(fd);
      break;
    }
    client_fds_.push_back(fd);
    clients_.emplace_back([this, fd] { serve(fd); });
  }
}

void StoreServer::serve(int fd) {
  for (;;) {
    uint8_t op = 0;
    uint32_t klen = 0;
    uint64_t vlen = 0;
    int64_t timeout_ms = 0;
    if (!read_all(fd, &op, 1) || !read_all(fd, &klen, 4) || klen > kMaxKey) return;
    std::string key(klen, '\0');
    if (!read_all(fd, key.data(), klen) || !read_all(fd, &vlen, 8) || vlen > kMaxValue) return;
    std::vector<uint8_t> val(vlen);
    if (!read_all(fd, val.data(), vlen) || !read_all(fd, &timeout_ms, 8)) return;

    uint8_t status = 0;
    std::vector<uint8_t> reply;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (op == kSet) {
        data_[key] = std::move(val);
        cv_.notify_all();
      } else if (op == kGet) {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
        bool found = cv_.wait_until(lock, deadline, [&] { return stopping_ || data_.count(key) > 0; });
        if (found && data_.count(key)) reply = data_[key];
        else status = 1;  // timed out
      } else if (op == kAdd) {
        int64_t delta = 0, cur = 0;
        if (val.size() == 8) std::memcpy(&delta, val.data(), 8);
        auto& slot = data_[key];
        if (slot.size() == 8) std::memcpy(&cur, slot.data(), 8);
        cur += delta;
        slot.resize(8);
        std::memcpy(slot.data(), &cur, 8);
        reply = slot;
        cv_.notify_all();
      } else {
        return;
      }
    }
    uint64_t rlen = reply.size();
    if (!write_all(fd, &status, 1) || !write_all(fd, &rlen, 8) || !write_all(fd, reply.data(), rlen)) return;
  }
}

StoreClient::StoreClient(const std::string& addr, int port, int64_t timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  std::string last_err;
  for (;;) {
    addrinfo* res = resolve(addr, port, false);
    for (addrinfo* ai = res; ai && fd_ < 0; ai = ai->ai_next) {
      int fd = ::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
      if (fd < 0) continue;
      if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
        fd_ = fd;
      } else {
        last_err = std::strerror(errno);
        ::close(fd);
      }
    }
    ::freeaddrinfo(res);
    if (fd_ >= 0) break;
    if (now_ms() > deadline)
      fail("store: cannot connect to ", addr, ":", port, " within ", timeout_ms, " ms (", last_err,
           "); is rank 0 running and MASTER_ADDR/MASTER_PORT the same on every rank?");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

StoreClient::~StoreClient() {
  if (fd_ >= 0) ::close(fd_);
}

std::vector<uint8_t> StoreClient::request(uint8_t op, const std::string& key,
                                          const std::vector<uint8_t>& value, int64_t timeout_ms) {
  DETINFER_CHECK(key.size() <= kMaxKey, "store: key too long (", key.size(), " bytes)");
  DETINFER_CHECK(value.size() <= kMaxValue, "store: value too large (", value.size(), " bytes)");
  std::lock_guard<std::mutex> lock(mu_);
  uint32_t klen = static_cast<uint32_t>(key.size());
  uint64_t vlen = value.size();
  bool ok = write_all(fd_, &op, 1) && write_all(fd_, &klen, 4) && write_all(fd_, key.data(), klen) &&
            write_all(fd_, &vlen, 8) && write_all(fd_, value.data(), vlen) && write_all(fd_, &timeout_ms, 8);
  uint8_t status = 0;
  uint64_t rlen = 0;
  ok = ok && read_all(fd_, &status, 1) && read_all(fd_, &rlen, 8) && rlen <= kMaxValue;
  DETINFER_CHECK(ok, "store: connection to the rank-0 store lost (did rank 0 exit?)");
  std::vector<uint8_t> reply(rlen);
  DETINFER_CHECK(read_all(fd_, reply.data(), rlen), "store: connection to the rank-0 store lost");
  if (status != 0) fail("store: key '", key, "' did not appear within ", timeout_ms, " ms (a rank is missing or late)");
  return reply;
}

void StoreClient::set(const std::string& key, const std::vector<uint8_t>& value) { request(kSet, key, value, 0); }

std::vector<uint8_t> StoreClient::get(const std::string& key, int64_t timeout_ms) {
  return request(kGet, key, {}, timeout_ms);
}

int64_t StoreClient::add(const std::string& key, int64_t delta) {
  std::vector<uint8_t> v(8);
  std::memcpy(v.data(), &delta, 8);
  auto r = request(kAdd, key, v, 0);
  int64_t out = 0;
  if (r.size() == 8) std::memcpy(&out, r.data(), 8);
  return out;
}

void StoreClient::barrier(const std::string& name, int count, int64_t timeout_ms) {
  if (add(name + "/arrived", 1) == count) set(name + "/done", {1});
  get(name + "/done", timeout_ms);
}

std::vector<std::vector<uint8_t>> store_all_gather(StoreClient& store, const std::string& key, int rank,
                                                   int world, const std::vector<uint8_t>& mine,
                                                   int64_t timeout_ms) {
  store.set(key + "/" + std::to_string(rank), mine);
  std::vector<std::vector<uint8_t>> all(world);
  for (int r = 0; r < world; ++r) all[r] = store.get(key + "/" + std::to_string(r), timeout_ms);
  return all;
}

}  // namespace detinfer::comm
