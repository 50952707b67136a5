// The floor of the proxy benchmarks: a TCP relay that does no work at all. Each accepted
// connection gets one to the upstream, and bytes are copied both ways as they come (no TLS, no
// HTTP/2, no allocation per read) on one thread, waiting in epoll as nginx and HAProxy do. A pair
// of these adds only what two more processes on the path cost the machine itself (wake-ups,
// loopback TCP), so `scripts/bench` can say how much of a proxy pair's added latency is the
// proxies' own work. Written in C, like the proxies it is the floor for.
//
//     bench-relay LISTEN-PORT UPSTREAM-PORT      (both on 127.0.0.1)
#define _GNU_SOURCE  // accept4
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { maxDescriptors = 4096, bufferSize = 1 << 16 };

// By descriptor: the other end of its pair, and the bytes read for it that it could not take yet.
// While bytes wait for a descriptor, its peer is not read (backpressure).
static int peer[maxDescriptors];
static char *waiting[maxDescriptors];
static size_t waitingFrom[maxDescriptors], waitingTo[maxDescriptors];
static int epollFD;

static void watch(int fd, unsigned events, int operation) {
  struct epoll_event event = {.events = events, .data.fd = fd};
  epoll_ctl(epollFD, operation, fd, &event);
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return address;
}

static void closePair(int fd) {
  int ends[2] = {fd, peer[fd]};
  for (int i = 0; i < 2; i++) {
    int end = ends[i];
    if (end < 0) continue;
    epoll_ctl(epollFD, EPOLL_CTL_DEL, end, NULL);
    close(end);
    free(waiting[end]);
    waiting[end] = NULL;
    peer[end] = -1;
  }
}

static void acceptAll(int listener, int upstreamPort) {
  for (;;) {
    int client = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (client < 0) return;
    int upstream = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in address = loopback(upstreamPort);
    if (client >= maxDescriptors || upstream < 0 || upstream >= maxDescriptors ||
        connect(upstream, (struct sockaddr *)&address, sizeof address) != 0) {
      fprintf(stderr, "bench-relay: upstream 127.0.0.1:%d: %s\n", upstreamPort, strerror(errno));
      close(client);
      if (upstream >= 0) close(upstream);
      continue;
    }
    fcntl(upstream, F_SETFL, fcntl(upstream, F_GETFL) | O_NONBLOCK);
    int one = 1;
    int ends[2] = {client, upstream};
    for (int i = 0; i < 2; i++) {
      setsockopt(ends[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      waiting[ends[i]] = malloc(bufferSize);
      waitingFrom[ends[i]] = waitingTo[ends[i]] = 0;
      watch(ends[i], EPOLLIN, EPOLL_CTL_ADD);
    }
    peer[client] = upstream;
    peer[upstream] = client;
  }
}

static void forward(int from) {
  static char buffer[bufferSize];
  int to = peer[from];
  if (to < 0 || waitingTo[to] > waitingFrom[to]) return;
  ssize_t count = read(from, buffer, sizeof buffer);
  if (count == 0 || (count < 0 && errno != EAGAIN && errno != EINTR)) {
    closePair(from);
    return;
  }
  if (count < 0) return;
  ssize_t written = 0;
  while (written < count) {
    ssize_t n = write(to, buffer + written, (size_t)(count - written));
    if (n > 0) {
      written += n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      memcpy(waiting[to], buffer + written, (size_t)(count - written));
      waitingFrom[to] = 0;
      waitingTo[to] = (size_t)(count - written);
      watch(to, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
      watch(from, 0, EPOLL_CTL_MOD);
      return;
    } else {
      closePair(from);
      return;
    }
  }
}

static void drain(int to) {
  while (waitingFrom[to] < waitingTo[to]) {
    ssize_t n = write(to, waiting[to] + waitingFrom[to], waitingTo[to] - waitingFrom[to]);
    if (n > 0) {
      waitingFrom[to] += (size_t)n;
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      return;
    } else {
      closePair(to);
      return;
    }
  }
  waitingFrom[to] = waitingTo[to] = 0;
  watch(to, EPOLLIN, EPOLL_CTL_MOD);
  watch(peer[to], EPOLLIN, EPOLL_CTL_MOD);
}

int main(int argc, char **argv) {
  if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    printf("USAGE: bench-relay LISTEN-PORT UPSTREAM-PORT\n\n"
           "Relays each connection to 127.0.0.1:LISTEN-PORT to 127.0.0.1:UPSTREAM-PORT,\n"
           "copying bytes both ways and doing no other work: the floor of scripts/bench.\n");
    return 0;
  }
  int listenPort = argc == 3 ? atoi(argv[1]) : 0, upstreamPort = argc == 3 ? atoi(argv[2]) : 0;
  if (listenPort <= 0 || listenPort > 65535 || upstreamPort <= 0 || upstreamPort > 65535) {
    fprintf(stderr, "usage: bench-relay LISTEN-PORT UPSTREAM-PORT (both on 127.0.0.1)\n");
    return 2;
  }
  for (int i = 0; i < maxDescriptors; i++) peer[i] = -1;
  epollFD = epoll_create1(EPOLL_CLOEXEC);
  int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in address = loopback(listenPort);
  if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 128) != 0) {
    fprintf(stderr, "bench-relay: cannot listen on 127.0.0.1:%d: %s\n", listenPort, strerror(errno));
    return 1;
  }
  watch(listener, EPOLLIN, EPOLL_CTL_ADD);
  struct epoll_event events[64];
  for (;;) {
    int count = epoll_wait(epollFD, events, 64, -1);
    if (count < 0 && errno != EINTR) {
      perror("bench-relay: epoll_wait");
      return 1;
    }
    for (int i = 0; i < count; i++) {
      int fd = events[i].data.fd;
      if (fd == listener) {
        acceptAll(listener, upstreamPort);
        continue;
      }
      if (peer[fd] < 0) continue;  // closed earlier in this batch
      if (events[i].events & EPOLLOUT) drain(fd);
      if (peer[fd] >= 0 && events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) forward(fd);
    }
  }
}
