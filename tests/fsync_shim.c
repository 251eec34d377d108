/* LD_PRELOAD shim for tests/test_durability.py: traces writes and syncs to regular files.
 *
 * Build:  cc -shared -fPIC -O2 -o fsync_shim.so fsync_shim.c -ldl
 * Use:    LD_PRELOAD=./fsync_shim.so TALLY_SYNC_TRACE=/path/to/trace python ...
 *
 * Every call to fsync, fdatasync, msync, sync_file_range, syncfs, sync, and to write, pwrite,
 * pwrite64, writev, pwritev, pwritev64, pwritev2, pwritev64v2 (Python's os.pwritev) on a regular file (other than the trace itself) is passed
 * on to libc (dlsym(RTLD_NEXT, ...)) and then, once it has returned, appended to the trace as
 * one line, in one write() on an O_APPEND descriptor, so lines from several threads and the
 * process's own appends to the same file (the test's "ACK n" lines) never interleave and appear
 * in the order the calls completed:
 *
 *     <counter> <call> <fd> <dsync> <offset> <length> <result> <path>
 *
 * counter: this process's running count of traced calls, in trace order (taken under the same
 *          lock as the append); call: the function's name; dsync: 1 if the descriptor was
 *          opened with O_DSYNC or O_SYNC (each write on it is synchronous), else 0; offset: the
 *          file offset written at (for write/writev: the position before the call), for
 *          msync/sync_file_range the range's start; length: bytes asked for (for
 *          sync_file_range its flags follow as "flags=N" after the path); result: the return
 *          value (-1 is a failure: errno is preserved for the caller); path: /proc/self/fd/<fd>
 *          resolved (for msync: the file mapped at the address, from /proc/self/maps; "-" if
 *          none). The path is the rest of the line.
 *
 * Without TALLY_SYNC_TRACE in the environment it only passes calls through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_msync)(void *, size_t, int);
static int (*real_sync_file_range)(int, off64_t, off64_t, unsigned int);
static int (*real_syncfs)(int);
static void (*real_sync)(void);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off64_t);
static ssize_t (*real_pwritev2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*real_pwritev64v2)(int, const struct iovec *, int, off64_t, int);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t trace_lock = PTHREAD_MUTEX_INITIALIZER;
static int trace_fd = -1;
static dev_t trace_dev;
static ino_t trace_ino;
static uint64_t counter;

static void *next(const char *name) {
    void *symbol = dlsym(RTLD_NEXT, name);
    if (symbol == NULL) {
        static const char message[] = "fsync_shim: a libc symbol is missing\n";
        (void)!syscall(SYS_write, 2, message, sizeof message - 1);  /* write() is this shim's */
        abort();
    }
    return symbol;
}

static void init(void) {
    real_fsync = next("fsync");
    real_fdatasync = next("fdatasync");
    real_msync = next("msync");
    real_sync_file_range = next("sync_file_range");
    real_syncfs = next("syncfs");
    real_sync = next("sync");
    real_write = next("write");
    real_pwrite = next("pwrite");
    real_pwrite64 = next("pwrite64");
    real_writev = next("writev");
    real_pwritev = next("pwritev");
    real_pwritev64 = next("pwritev64");
    real_pwritev2 = next("pwritev2");
    real_pwritev64v2 = next("pwritev64v2");
    const char *path = getenv("TALLY_SYNC_TRACE");
    if (path != NULL && *path != '\0') {
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) == 0) {
            trace_dev = st.st_dev;
            trace_ino = st.st_ino;
            trace_fd = fd;
        }
    }
}

__attribute__((constructor)) static void shim_constructor(void) { pthread_once(&once, init); }

static void ensure(void) { pthread_once(&once, init); }

/* Whether calls on fd are traced: a regular file that is not the trace itself. */
static int traced(int fd) {
    struct stat st;
    if (trace_fd < 0 || fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    return !(st.st_dev == trace_dev && st.st_ino == trace_ino);
}

static void fd_path(int fd, char *out, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size - 1);
    if (n < 0)
        snprintf(out, size, "-");
    else
        out[n] = '\0';
}

/* The file mapped at addr, from /proc/self/maps ("-" if none). */
static void mapped_path(const void *addr, char *out, size_t size) {
    snprintf(out, size, "-");
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    char buffer[1 << 14];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, buffer + have, sizeof buffer - 1 - have);
        if (n <= 0)
            break;
        have += (size_t)n;
        buffer[have] = '\0';
        char *line = buffer, *end;
        while ((end = strchr(line, '\n')) != NULL) {
            *end = '\0';
            uintptr_t lo, hi;
            int path_at = 0;
            if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %*s %*s %*s %*s %n", &lo, &hi, &path_at) == 2
                    && (uintptr_t)addr >= lo && (uintptr_t)addr < hi && path_at > 0 && line[path_at] == '/') {
                snprintf(out, size, "%s", line + path_at);
                close(fd);
                return;
            }
            line = end + 1;
        }
        have = strlen(line);
        memmove(buffer, line, have);
        if (have == sizeof buffer - 1)
            have = 0;  /* a line longer than the buffer: drop it */
    }
    close(fd);
}

static void emit(const char *call, int fd, long long offset, long long length, long long result,
                 const char *path, const char *suffix) {
    char line[4096 + 256];
    int dsync = 0;
    if (fd >= 0) {
        int flags = fcntl(fd, F_GETFL);
        dsync = flags >= 0 && (flags & O_DSYNC) != 0;  /* O_SYNC includes the O_DSYNC bit */
    }
    pthread_mutex_lock(&trace_lock);
    int n = snprintf(line, sizeof line, "%" PRIu64 " %s %d %d %lld %lld %lld %s%s\n", ++counter, call, fd,
                     dsync, offset, length, result, path, suffix);
    if (n > (int)sizeof line - 1) {
        n = (int)sizeof line - 1;
        line[n - 1] = '\n';
    }
    (void)!real_write(trace_fd, line, (size_t)n);
    pthread_mutex_unlock(&trace_lock);
}

static void trace_fd_call(const char *call, int fd, long long offset, long long length, long long result,
                          const char *suffix) {
    char path[4096];
    fd_path(fd, path, sizeof path);
    emit(call, fd, offset, length, result, path, suffix);
}

static long long position(int fd) { return (long long)lseek(fd, 0, SEEK_CUR); }

static size_t iov_bytes(const struct iovec *iov, int count) {
    size_t total = 0;
    for (int i = 0; i < count; i++)
        total += iov[i].iov_len;
    return total;
}

/* ------------------------------------------------------------------ syncs */

int fsync(int fd) {
    ensure();
    int result = real_fsync(fd);
    int saved = errno;
    if (traced(fd))
        trace_fd_call("fsync", fd, 0, 0, result, "");
    errno = saved;
    return result;
}

int fdatasync(int fd) {
    ensure();
    int result = real_fdatasync(fd);
    int saved = errno;
    if (traced(fd))
        trace_fd_call("fdatasync", fd, 0, 0, result, "");
    errno = saved;
    return result;
}

int msync(void *addr, size_t length, int flags) {
    ensure();
    int result = real_msync(addr, length, flags);
    int saved = errno;
    if (trace_fd >= 0) {
        char path[4096], suffix[32];
        mapped_path(addr, path, sizeof path);
        snprintf(suffix, sizeof suffix, " flags=%d", flags);
        emit((flags & MS_SYNC) ? "msync" : "msync_async", -1, (long long)(uintptr_t)addr, (long long)length,
             result, path, suffix);
    }
    errno = saved;
    return result;
}

int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
    ensure();
    int result = real_sync_file_range(fd, offset, nbytes, flags);
    int saved = errno;
    if (traced(fd)) {
        char suffix[32];
        snprintf(suffix, sizeof suffix, " flags=%u", flags);
        trace_fd_call("sync_file_range", fd, offset, nbytes, result, suffix);
    }
    errno = saved;
    return result;
}

int syncfs(int fd) {
    ensure();
    int result = real_syncfs(fd);
    int saved = errno;
    if (trace_fd >= 0)
        trace_fd_call("syncfs", fd, 0, 0, result, "");
    errno = saved;
    return result;
}

void sync(void) {
    ensure();
    real_sync();
    int saved = errno;
    if (trace_fd >= 0)
        emit("sync", -1, 0, 0, 0, "-", "");
    errno = saved;
}

/* ------------------------------------------------------------------ writes */

ssize_t write(int fd, const void *buf, size_t count) {
    ensure();
    if (!traced(fd))
        return real_write(fd, buf, count);
    long long at = position(fd);
    ssize_t result = real_write(fd, buf, count);
    int saved = errno;
    trace_fd_call("write", fd, at, (long long)count, result, "");
    errno = saved;
    return result;
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    ensure();
    ssize_t result = real_pwrite(fd, buf, count, offset);
    int saved = errno;
    if (traced(fd))
        trace_fd_call("pwrite", fd, (long long)offset, (long long)count, result, "");
    errno = saved;
    return result;
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    ensure();
    ssize_t result = real_pwrite64(fd, buf, count, offset);
    int saved = errno;
    if (traced(fd))
        trace_fd_call("pwrite64", fd, (long long)offset, (long long)count, result, "");
    errno = saved;
    return result;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    ensure();
    if (!traced(fd))
        return real_writev(fd, iov, iovcnt);
    long long at = position(fd);
    ssize_t result = real_writev(fd, iov, iovcnt);
    int saved = errno;
    trace_fd_call("writev", fd, at, (long long)iov_bytes(iov, iovcnt), result, "");
    errno = saved;
    return result;
}

/* The pwritev family's tracing, after the real call (errno kept as the call left it). */
static ssize_t traced_positioned_writev(const char *name, int fd, const struct iovec *iov, int iovcnt,
                                        long long offset, ssize_t result) {
    int saved = errno;
    if (traced(fd))
        trace_fd_call(name, fd, offset, (long long)iov_bytes(iov, iovcnt), result, "");
    errno = saved;
    return result;
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    ensure();
    return traced_positioned_writev("pwritev", fd, iov, iovcnt, (long long)offset, real_pwritev(fd, iov, iovcnt, offset));
}

ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off64_t offset) {
    ensure();
    return traced_positioned_writev("pwritev64", fd, iov, iovcnt, (long long)offset, real_pwritev64(fd, iov, iovcnt, offset));
}

ssize_t pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t offset, int flags) {
    ensure();
    return traced_positioned_writev("pwritev2", fd, iov, iovcnt, (long long)offset, real_pwritev2(fd, iov, iovcnt, offset, flags));
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int iovcnt, off64_t offset, int flags) {
    ensure();
    return traced_positioned_writev("pwritev64v2", fd, iov, iovcnt, (long long)offset, real_pwritev64v2(fd, iov, iovcnt, offset, flags));
}
