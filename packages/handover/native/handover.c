/*
 * handover.c: pass an open socket to another process over a Unix socket (SCM_RIGHTS), as
 * Postfix's postscreen passes a client it has screened to smtpd. Node.js can send a handle only to
 * its own child over the IPC channel it created, so the two calls that Node lacks are written here:
 *
 *   send(path, fd, data)         one message to the socket listening at `path`: `data` (at least one
 *                                byte) with `fd` attached; never blocks. Throws an Error whose `code` is
 *                                the errno name (ENOENT, ECONNREFUSED: no receiver; EAGAIN: it is not
 *                                keeping up). The sender keeps its own copy of fd and closes it.
 *   listen(path, onMessage)      listens at `path` and calls onMessage(fd, data) on the event loop for
 *                                every message that carries exactly one descriptor (fd -1 for one that
 *                                carried none, was truncated or carried several: those descriptors are
 *                                closed here). Returns a handle for close().
 *   close(handle)                stops listening and closes the senders' connections (the path is left
 *                                to the caller).
 *
 * SOCK_SEQPACKET, connected: each message keeps its boundary and its descriptor, and the backlog is
 * the socket buffer. (An unconnected datagram socket would do the same with one call less, but Linux
 * lets at most net.unix.max_dgram_qlen of them wait, 10 by default: at 50 clients arriving at once,
 * one in ten was refused with EAGAIN and spliced.) The sender keeps one connection open; the
 * receiving sockets are watched with libuv's uv_poll on Node's own loop, so no thread is added.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <node_api.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#define MAX_DATA 65536
#define MAX_FDS 8

#define CHECK(call)                                                                                \
  do {                                                                                             \
    if ((call) != napi_ok) {                                                                       \
      napi_throw_error(env, NULL, "handover: N-API call failed: " #call);                         \
      return NULL;                                                                                 \
    }                                                                                              \
  } while (0)

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  char message[256];
  napi_value code, msg, error;
  const char *name = strerrorname_np(err);
  snprintf(message, sizeof message, "%s %s: %s", syscall, name ? name : "?", strerror(err));
  napi_create_string_utf8(env, name ? name : "EUNKNOWN", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &error);
  napi_throw(env, error);
  return NULL;
}

/* The longest path sun_path holds with its NUL: 107 bytes on Linux. */
#define MAX_PATH_BYTES (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

/*
 * `value` as a Unix socket address. Its length is measured before it is copied: a copy that fills
 * sun_path cannot tell a path of exactly MAX_PATH_BYTES from a longer one cut to fit (another file).
 */
static int unix_address(napi_env env, napi_value value, struct sockaddr_un *addr, socklen_t *len) {
  size_t n = 0;
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &n) != napi_ok) return -1;
  if (n == 0 || n > MAX_PATH_BYTES) return -1;
  if (napi_get_value_string_utf8(env, value, addr->sun_path, sizeof addr->sun_path, &n) != napi_ok)
    return -1;
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
  return 0;
}

#define PATH_RULE "path must be a Unix socket path of 1 to 107 bytes"

/*
 * The sending side keeps one connection, to the last path it sent to, and makes it again when the
 * receiver went away (a greylist restarted binds a new socket at the same path).
 */
static int sender_fd = -1;
static struct sockaddr_un sender_addr;

static void sender_close(void) {
  if (sender_fd >= 0) close(sender_fd);
  sender_fd = -1;
}

/* Connects to `addr` unless already connected there; 0 or an errno. Never waits. */
static int sender_connect(const struct sockaddr_un *addr, socklen_t addr_len) {
  if (sender_fd >= 0 && strcmp(sender_addr.sun_path, addr->sun_path) == 0) return 0;
  sender_close();
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  if (connect(fd, (const struct sockaddr *)addr, addr_len) != 0) {
    int err = errno;
    close(fd);
    return err; /* ENOENT, ECONNREFUSED (nobody listens), EAGAIN (its backlog is full) */
  }
  sender_fd = fd;
  sender_addr = *addr;
  return 0;
}

static napi_value send_fd(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  struct sockaddr_un addr;
  socklen_t addr_len;
  int32_t fd;
  void *data;
  size_t data_len;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3 || unix_address(env, argv[0], &addr, &addr_len) != 0) {
    napi_throw_type_error(env, NULL, "handover.send(path, fd, data): " PATH_RULE);
    return NULL;
  }
  if (napi_get_value_int32(env, argv[1], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "handover.send(path, fd, data): fd must be a descriptor");
    return NULL;
  }
  if (napi_get_buffer_info(env, argv[2], &data, &data_len) != napi_ok || data_len == 0 ||
      data_len > MAX_DATA) {
    napi_throw_type_error(env, NULL, "handover.send(path, fd, data): data must be 1 to 65536 bytes");
    return NULL;
  }
  struct iovec iov = {.iov_base = data, .iov_len = data_len};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof control);
  struct msghdr msg = {
      .msg_iov = &iov,
      .msg_iovlen = 1,
      .msg_control = control.buf,
      .msg_controllen = sizeof control.buf,
  };
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof(int));
  /* a kept connection whose receiver went away fails with EPIPE (or ECONNRESET): once more, anew */
  for (int attempt = 0; attempt < 2; attempt++) {
    int err = sender_connect(&addr, addr_len);
    if (err) return throw_errno(env, err, "connect");
    ssize_t sent;
    do {
      sent = sendmsg(sender_fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent >= 0) return NULL;
    err = errno;
    if (err == EAGAIN || attempt == 1 || (err != EPIPE && err != ECONNRESET && err != ENOTCONN)) {
      if (err != EAGAIN) sender_close();
      return throw_errno(env, err, "sendmsg");
    }
    sender_close();
  }
  return NULL;
}

typedef struct receiver receiver_t;

/* One sender's connection (screen's; a restarted screen makes a new one). */
typedef struct conn {
  uv_poll_t poll;
  int fd;
  receiver_t *r;
  struct conn *next;
} conn_t;

struct receiver {
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  uv_poll_t poll; /* the listening socket */
  int fd;
  int closed;
  int handles; /* libuv handles not yet closed: the listener's and each connection's */
  conn_t *conns;
  char data[MAX_DATA];
};

static void handle_closed(receiver_t *r) {
  if (--r->handles == 0) free(r);
}

/* After libuv let go of a handle: its descriptor is closed only now, as uv_poll requires. */
static void listener_closed(uv_handle_t *handle) {
  receiver_t *r = handle->data;
  close(r->fd);
  handle_closed(r);
}

static void conn_closed(uv_handle_t *handle) {
  conn_t *c = handle->data;
  receiver_t *r = c->r;
  close(c->fd);
  free(c);
  handle_closed(r);
}

static void conn_close(conn_t *c) {
  receiver_t *r = c->r;
  for (conn_t **p = &r->conns; *p; p = &(*p)->next) {
    if (*p == c) {
      *p = c->next;
      break;
    }
  }
  uv_poll_stop(&c->poll);
  uv_close((uv_handle_t *)&c->poll, conn_closed);
}

/* Calls onMessage(fd, data) inside a callback scope, so microtasks run and errors reach Node. */
static void deliver(receiver_t *r, int fd, const char *data, size_t len) {
  napi_env env = r->env;
  napi_handle_scope scope;
  napi_value callback, recv, argv[2], result;
  void *copy;
  if (napi_open_handle_scope(env, &scope) != napi_ok) {
    if (fd >= 0) close(fd);
    return;
  }
  napi_get_reference_value(env, r->callback, &callback);
  napi_get_global(env, &recv); /* napi_make_callback wants an object as `this` */
  napi_create_int32(env, fd, &argv[0]);
  napi_create_buffer_copy(env, len, data, &copy, &argv[1]);
  napi_status status = napi_make_callback(env, r->context, recv, callback, 2, argv, &result);
  if (status == napi_pending_exception) {
    napi_value error;
    napi_get_and_clear_last_exception(env, &error);
    napi_fatal_exception(env, error);
  } else if (status != napi_ok && fd >= 0) {
    close(fd); /* the callback never ran: nobody else will close it */
  }
  napi_close_handle_scope(env, scope);
}

/* One connection readable: each message is one handover (SEQPACKET keeps the boundaries). */
static void on_message(uv_poll_t *poll, int status, int events) {
  conn_t *c = poll->data;
  receiver_t *r = c->r;
  (void)events;
  if (r->closed) return;
  if (status < 0) {
    conn_close(c);
    return;
  }
  for (int i = 0; i < 64 && !r->closed; i++) {
    union {
      char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
      struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = r->data, .iov_len = MAX_DATA};
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
    ssize_t n = recvmsg(c->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return; /* drained */
    if (n <= 0) {
      conn_close(c); /* the sender closed its end (0), or the connection failed */
      return;
    }
    int fds[MAX_FDS];
    int count = 0;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h)) {
      if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
      size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t j = 0; j < k && count < MAX_FDS; j++)
        memcpy(&fds[count++], CMSG_DATA(h) + j * sizeof(int), sizeof(int));
    }
    int whole = !(msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC));
    if (count == 1 && whole) {
      deliver(r, fds[0], r->data, (size_t)n);
    } else {
      for (int j = 0; j < count; j++) close(fds[j]);
      deliver(r, -1, r->data, (size_t)n);
    }
  }
}

/* The listening socket readable: accept every waiting sender. */
static void on_connection(uv_poll_t *poll, int status, int events) {
  receiver_t *r = poll->data;
  uv_loop_t *loop = poll->loop;
  (void)events;
  if (status < 0 || r->closed) return;
  for (;;) {
    int fd = accept4(r->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return; /* EAGAIN: none left (or a transient error; the poll fires again) */
    conn_t *c = calloc(1, sizeof *c);
    if (!c || uv_poll_init(loop, &c->poll, fd) != 0) {
      free(c);
      close(fd);
      continue;
    }
    c->fd = fd;
    c->r = r;
    c->poll.data = c;
    c->next = r->conns;
    r->conns = c;
    r->handles++;
    uv_poll_start(&c->poll, UV_READABLE, on_message);
  }
}

static napi_value listen_path(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], name, handle;
  struct sockaddr_un addr;
  socklen_t addr_len;
  napi_valuetype type;
  uv_loop_t *loop;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || unix_address(env, argv[0], &addr, &addr_len) != 0) {
    napi_throw_type_error(env, NULL, "handover.listen(path, onMessage): " PATH_RULE);
    return NULL;
  }
  CHECK(napi_typeof(env, argv[1], &type));
  if (type != napi_function) {
    napi_throw_type_error(env, NULL, "handover.listen(path, onMessage): onMessage must be a function");
    return NULL;
  }
  CHECK(napi_get_uv_event_loop(env, &loop));
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket");
  if (bind(fd, (struct sockaddr *)&addr, addr_len) != 0 || listen(fd, SOMAXCONN) != 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, err, "bind");
  }
  receiver_t *r = calloc(1, sizeof *r);
  if (!r || uv_poll_init(loop, &r->poll, fd) != 0) {
    free(r);
    close(fd);
    return throw_errno(env, ENOMEM, "uv_poll_init");
  }
  r->env = env;
  r->fd = fd;
  r->handles = 1;
  r->poll.data = r;
  CHECK(napi_create_reference(env, argv[1], 1, &r->callback));
  CHECK(napi_create_string_utf8(env, "moat.handover", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_async_init(env, NULL, name, &r->context));
  uv_poll_start(&r->poll, UV_READABLE, on_connection);
  CHECK(napi_create_external(env, r, NULL, NULL, &handle));
  return handle;
}

/* Stops listening and closes every sender's connection; messages not yet read are dropped (the kernel closes their descriptors). */
static napi_value close_receiver(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  receiver_t *r;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || napi_get_value_external(env, argv[0], (void **)&r) != napi_ok || !r) {
    napi_throw_type_error(env, NULL, "handover.close(handle): not a receiver");
    return NULL;
  }
  if (r->closed) return NULL;
  r->closed = 1;
  napi_delete_reference(env, r->callback);
  napi_async_destroy(env, r->context);
  while (r->conns) conn_close(r->conns);
  uv_poll_stop(&r->poll);
  uv_close((uv_handle_t *)&r->poll, listener_closed);
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "send", NAPI_AUTO_LENGTH, send_fd, NULL, &fn);
  napi_set_named_property(env, exports, "send", fn);
  napi_create_function(env, "listen", NAPI_AUTO_LENGTH, listen_path, NULL, &fn);
  napi_set_named_property(env, exports, "listen", fn);
  napi_create_function(env, "close", NAPI_AUTO_LENGTH, close_receiver, NULL, &fn);
  napi_set_named_property(env, exports, "close", fn);
  return exports;
}
