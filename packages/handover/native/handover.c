/*
 * handover.c: pass an open socket to another process over a Unix datagram socket (SCM_RIGHTS), as
 * Postfix's postscreen passes a client it has screened to smtpd. Node.js can send a handle only to
 * its own child over the IPC channel it created, so the two calls that Node lacks are written here:
 *
 *   send(path, fd, data)         one datagram to the socket bound at `path`: `data` (at least one byte)
 *                                with `fd` attached; never blocks. Throws an Error whose `code` is the
 *                                errno name (ENOENT, ECONNREFUSED, EAGAIN when the receiver's queue is
 *                                full, ...). The sender keeps its own copy of fd and closes it.
 *   listen(path, onMessage)      binds a datagram socket at `path` and calls onMessage(fd, data) on the
 *                                event loop for every datagram that carries exactly one descriptor
 *                                (fd -1 for one that carried none, was truncated or carried several:
 *                                those descriptors are closed here). Returns a handle for close().
 *   close(handle)                stops and closes the receiving socket (the path is left to the caller).
 *
 * The receiving socket is watched with libuv's uv_poll on Node's own loop, so no thread is added.
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

static int unix_address(napi_env env, napi_value value, struct sockaddr_un *addr, socklen_t *len) {
  size_t n = 0;
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (napi_get_value_string_utf8(env, value, addr->sun_path, sizeof addr->sun_path, &n) != napi_ok)
    return -1;
  if (n == 0 || n >= sizeof addr->sun_path - 1) return -1;
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
  return 0;
}

/* The sending socket: one per process (per addon instance), unbound, made on first use. */
static int sender_fd = -1;

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
    napi_throw_type_error(env, NULL, "handover.send(path, fd, data): path must be a socket path");
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
  if (sender_fd < 0) {
    sender_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (sender_fd < 0) return throw_errno(env, errno, "socket");
  }
  struct iovec iov = {.iov_base = data, .iov_len = data_len};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof control);
  struct msghdr msg = {
      .msg_name = &addr,
      .msg_namelen = addr_len,
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
  ssize_t sent;
  do {
    sent = sendmsg(sender_fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) return throw_errno(env, errno, "sendmsg");
  return NULL;
}

typedef struct {
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  uv_poll_t poll;
  int fd;
  int closed;
  char data[MAX_DATA];
} receiver_t;

/* After libuv let go of the handle: the descriptor is closed only now, as uv_poll requires. */
static void free_receiver(uv_handle_t *handle) {
  receiver_t *r = handle->data;
  close(r->fd);
  free(r);
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

static void on_readable(uv_poll_t *poll, int status, int events) {
  receiver_t *r = poll->data;
  (void)events;
  if (status < 0 || r->closed) return;
  for (int i = 0; i < 64 && !r->closed; i++) {
    union {
      char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
      struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = r->data, .iov_len = MAX_DATA};
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
    ssize_t n = recvmsg(r->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return; /* EAGAIN: drained */
    }
    int fds[MAX_FDS];
    int count = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t j = 0; j < k && count < MAX_FDS; j++) memcpy(&fds[count++], CMSG_DATA(c) + j * sizeof(int), sizeof(int));
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

static napi_value listen_path(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], name, handle;
  struct sockaddr_un addr;
  socklen_t addr_len;
  napi_valuetype type;
  uv_loop_t *loop;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || unix_address(env, argv[0], &addr, &addr_len) != 0) {
    napi_throw_type_error(env, NULL, "handover.listen(path, onMessage): path must be a socket path");
    return NULL;
  }
  CHECK(napi_typeof(env, argv[1], &type));
  if (type != napi_function) {
    napi_throw_type_error(env, NULL, "handover.listen(path, onMessage): onMessage must be a function");
    return NULL;
  }
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket");
  if (bind(fd, (struct sockaddr *)&addr, addr_len) != 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, err, "bind");
  }
  receiver_t *r = calloc(1, sizeof *r);
  if (!r) {
    close(fd);
    return throw_errno(env, ENOMEM, "calloc");
  }
  r->env = env;
  r->fd = fd;
  CHECK(napi_get_uv_event_loop(env, &loop));
  CHECK(napi_create_reference(env, argv[1], 1, &r->callback));
  CHECK(napi_create_string_utf8(env, "moat.handover", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_async_init(env, NULL, name, &r->context));
  if (uv_poll_init(loop, &r->poll, fd) != 0) {
    close(fd);
    free(r);
    return throw_errno(env, EINVAL, "uv_poll_init");
  }
  r->poll.data = r;
  uv_poll_start(&r->poll, UV_READABLE, on_readable);
  CHECK(napi_create_external(env, r, NULL, NULL, &handle));
  return handle;
}

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
  uv_poll_stop(&r->poll);
  napi_delete_reference(env, r->callback);
  napi_async_destroy(env, r->context);
  uv_close((uv_handle_t *)&r->poll, free_receiver);
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
