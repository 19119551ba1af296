/* Slow disk by LD_PRELOAD (the chaos suite's stand-in for device-mapper delay, which this machine lacks).
 *
 * Wraps fsync, fdatasync, msync and sync_file_range: when the file named by $HACTL_SLOWDISK_FILE holds a number
 * N > 0, each call sleeps N milliseconds and then does the real call. The file is re-read at most every 50 ms
 * (a cached value and a monotonic clock check), so a busy writer pays a clock read per call, not a file read.
 * Built by tests/chaos/slowdisk.py: cc -O2 -shared -fPIC -o slowdisk.so slowdisk.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RECHECK_NS 50000000LL /* 50 ms */
#define MAX_DELAY_MS 60000L

static char control_path[4096];
static _Atomic long cached_ms = 0;
static _Atomic long long next_check_ns = 0;

__attribute__((constructor)) static void slowdisk_init(void) {
    /* The path copied once: getenv later could race with a setenv in another thread. */
    const char *p = getenv("HACTL_SLOWDISK_FILE");
    if (p != NULL && strlen(p) < sizeof control_path)
        strcpy(control_path, p);
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long read_control(void) {
    char buf[32];
    int fd = open(control_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    long v = strtol(buf, NULL, 10);
    return v < 0 ? 0 : (v > MAX_DELAY_MS ? MAX_DELAY_MS : v);
}

static void maybe_sleep(void) {
    if (control_path[0] == 0)
        return;
    int saved = errno; /* the caller sees the real call's errno only */
    long long now = now_ns();
    if (now >= atomic_load(&next_check_ns)) {
        atomic_store(&next_check_ns, now + RECHECK_NS);
        atomic_store(&cached_ms, read_control());
    }
    long ms = atomic_load(&cached_ms);
    if (ms > 0) {
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
        }
    }
    errno = saved;
}

/* The next definition of name (libc's), looked up on first use. */
#define REAL(name) static __typeof__(&name) real_##name; \
    if (real_##name == NULL) real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

int fsync(int fd) {
    REAL(fsync);
    maybe_sleep();
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync);
    maybe_sleep();
    return real_fdatasync(fd);
}

int msync(void *addr, size_t length, int flags) {
    REAL(msync);
    maybe_sleep();
    return real_msync(addr, length, flags);
}

int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
    REAL(sync_file_range);
    maybe_sleep();
    return real_sync_file_range(fd, offset, nbytes, flags);
}
