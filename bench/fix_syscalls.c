// The syscall sequences of `asme fix` in a C loop, to see what the kernel's cost per entry
// allows before touching the walker (bench/README.md, "## asme fix").
//
//   gcc -O2 -o /tmp/fix_syscalls bench/fix_syscalls.c -luring -lpthread
//   chown -R 0:0 TREE && sync && /tmp/fix_syscalls TREE MODE THREADS [BATCH] [unshare]
//
// TREE holds folders of files (bench/fix.sh's tree); every file is chowned to 1234:1234,
// the folders are handed out to THREADS threads one at a time. Prints wall and CPU seconds.
// MODE, per file:
//   name        fchownat by name (what chown -R does; examines nothing)
//   statname    fstatat by name, fchownat by name (unsound: a swap between is acted on)
//   sound       openat O_PATH|O_NOFOLLOW, fstat, fchownat(fd, "", AT_EMPTY_PATH), close
//   statx       the same with statx(fd, NULL, AT_EMPTY_PATH) for the fstat
//   openclose   openat O_PATH + close only
//   uring       sound, with BATCH openats in one io_uring_enter, then statx and fchownat
//               as syscalls, then BATCH closes in one io_uring_enter
//   uringfstat  the same with fstat; uringstatx with IORING_OP_STATX (punted to io-wq);
//   uringnostat no stat at all (unsound: only to see what the stat costs)
// "unshare" gives each thread its own descriptor table (unshare(CLONE_FILES)).
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define UID 1234
#define GID 1234
static const char *mode;
static int nthreads, batch = 64, do_unshare;
static int topfd;
static char **dirs;
static int ndirs;
static atomic_int next;
static atomic_long errs;

static long sys_openat(int d, const char *n, int f) { return syscall(SYS_openat, d, n, f, 0); }
static long sys_fstat(int fd, struct stat *st) { return syscall(SYS_fstat, fd, st); }
static long sys_fchownat(int d, const char *n, int f) { return syscall(SYS_fchownat, d, n, UID, GID, f); }
static long sys_close(int fd) { return syscall(SYS_close, fd); }

// names of a folder
static int list(int dfd, char ***names, char **store) {
  static __thread char buf[64 * 1024];
  size_t cap = 1 << 16, used = 0;
  int n = 0, ncap = 2048;
  char *s = malloc(cap);
  size_t *off = malloc(ncap * sizeof *off);
  for (;;) {
    long r = syscall(SYS_getdents64, dfd, buf, sizeof buf);
    if (r <= 0) break;
    for (long p = 0; p < r;) {
      struct dirent64 *e = (void *)(buf + p);
      p += e->d_reclen;
      if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2]))) continue;
      size_t l = strlen(e->d_name) + 1;
      if (used + l > cap) s = realloc(s, cap *= 2);
      if (n == ncap) off = realloc(off, (ncap *= 2) * sizeof *off);
      memcpy(s + used, e->d_name, l);
      off[n++] = used;
      used += l;
    }
  }
  *names = malloc(n * sizeof(char *));
  for (int i = 0; i < n; i++) (*names)[i] = s + off[i];
  free(off);
  *store = s;
  return n;
}

static void ok(long r) {
  if (r < 0) atomic_fetch_add(&errs, 1);
}

static void do_sound(int dfd, char **names, int n) {
  struct stat st;
  for (int i = 0; i < n; i++) {
    int fd = sys_openat(dfd, names[i], O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) { ok(-1); continue; }
    ok(sys_fstat(fd, &st));
    if (st.st_uid != UID || st.st_gid != GID) ok(sys_fchownat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
    sys_close(fd);
  }
}

static void do_statx(int dfd, char **names, int n) {
  struct statx sx;
  for (int i = 0; i < n; i++) {
    int fd = sys_openat(dfd, names[i], O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) { ok(-1); continue; }
    ok(syscall(SYS_statx, fd, NULL, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW,
               STATX_TYPE | STATX_UID | STATX_GID | STATX_NLINK | STATX_INO, &sx));
    if (sx.stx_uid != UID || sx.stx_gid != GID) ok(sys_fchownat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
    sys_close(fd);
  }
}

static void do_name(int dfd, char **names, int n) {
  for (int i = 0; i < n; i++) ok(sys_fchownat(dfd, names[i], AT_SYMLINK_NOFOLLOW));
}

static void do_statname(int dfd, char **names, int n) {
  struct stat st;
  for (int i = 0; i < n; i++) {
    ok(syscall(SYS_newfstatat, dfd, names[i], &st, AT_SYMLINK_NOFOLLOW));
    ok(sys_fchownat(dfd, names[i], AT_SYMLINK_NOFOLLOW));
  }
}

static void do_openclose(int dfd, char **names, int n) {
  for (int i = 0; i < n; i++) {
    int fd = sys_openat(dfd, names[i], O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) { ok(-1); continue; }
    sys_close(fd);
  }
}

// io_uring: batches of openat, (statx via ring or fstat syscall), fchownat syscalls, close batch
static __thread struct io_uring ring;
static __thread int ring_ok;
static void ring_init(void) {
  struct io_uring_params p = {0};
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL;
  int r = io_uring_queue_init_params(512, &ring, &p);
  if (r < 0) { fprintf(stderr, "io_uring: %s\n", strerror(-r)); exit(1); }
  io_uring_register_ring_fd(&ring);
  ring_ok = 1;
}

static void reap(int n, int *res) {
  struct io_uring_cqe *cqe;
  for (int i = 0; i < n; i++) {
    if (io_uring_wait_cqe(&ring, &cqe)) exit(2);
    if (res) res[cqe->user_data] = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
  }
}

static void do_uring(int dfd, char **names, int n, int statx_ring) {
  if (!ring_ok) ring_init();
  int fds[512];
  struct statx sx[512];
  int sres[512];
  for (int b = 0; b < n; b += batch) {
    int m = n - b < batch ? n - b : batch;
    for (int i = 0; i < m; i++) {
      struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
      io_uring_prep_openat(sqe, dfd, names[b + i], O_PATH | O_NOFOLLOW | O_CLOEXEC, 0);
      sqe->user_data = i;
    }
    io_uring_submit_and_wait(&ring, m);
    reap(m, fds);
    if (statx_ring == 3) {
      for (int i = 0; i < m; i++) { sres[i] = 0; sx[i].stx_uid = 0; sx[i].stx_gid = 0; }
    } else if (statx_ring == 2) {
      struct stat st;
      for (int i = 0; i < m; i++) {
        if (fds[i] < 0) continue;
        sres[i] = sys_fstat(fds[i], &st);
        sx[i].stx_uid = st.st_uid; sx[i].stx_gid = st.st_gid;
      }
    } else if (statx_ring) {
      for (int i = 0; i < m; i++) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
        io_uring_prep_statx(sqe, fds[i] < 0 ? -1 : fds[i], "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW,
                            STATX_TYPE | STATX_UID | STATX_GID | STATX_NLINK | STATX_INO, &sx[i]);
        sqe->user_data = i;
      }
      io_uring_submit_and_wait(&ring, m);
      reap(m, sres);
    } else {
      for (int i = 0; i < m; i++) {
        if (fds[i] < 0) continue;
        sres[i] = syscall(SYS_statx, fds[i], NULL, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW,
                          STATX_TYPE | STATX_UID | STATX_GID | STATX_NLINK | STATX_INO, &sx[i]);
      }
    }
    int closes = 0;
    for (int i = 0; i < m; i++) {
      if (fds[i] < 0) { ok(-1); continue; }
      ok(sres[i]);
      if (sx[i].stx_uid != UID || sx[i].stx_gid != GID) ok(sys_fchownat(fds[i], "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
      struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
      io_uring_prep_close(sqe, fds[i]);
      sqe->user_data = i;
      closes++;
    }
    io_uring_submit_and_wait(&ring, closes);
    reap(closes, NULL);
  }
}

static void *worker(void *arg) {
  (void)arg;
  if (do_unshare && unshare(CLONE_FILES)) { perror("unshare"); exit(1); }
  for (;;) {
    int i = atomic_fetch_add(&next, 1);
    if (i >= ndirs) break;
    int dfd = openat(topfd, dirs[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) { perror("open dir"); exit(1); }
    char **names, *store;
    int n = list(dfd, &names, &store);
    if (!strcmp(mode, "sound")) do_sound(dfd, names, n);
    else if (!strcmp(mode, "statx")) do_statx(dfd, names, n);
    else if (!strcmp(mode, "name")) do_name(dfd, names, n);
    else if (!strcmp(mode, "statname")) do_statname(dfd, names, n);
    else if (!strcmp(mode, "openclose")) do_openclose(dfd, names, n);
    else if (!strcmp(mode, "uring")) do_uring(dfd, names, n, 0);
    else if (!strcmp(mode, "uringstatx")) do_uring(dfd, names, n, 1);
    else if (!strcmp(mode, "uringfstat")) do_uring(dfd, names, n, 2);
    else if (!strcmp(mode, "uringnostat")) do_uring(dfd, names, n, 3);
    else { fprintf(stderr, "mode?\n"); exit(1); }
    free(names);
    free(store);
    close(dfd);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 4) return 1;
  mode = argv[2];
  nthreads = atoi(argv[3]);
  if (argc > 4) batch = atoi(argv[4]);
  if (argc > 5) do_unshare = !strcmp(argv[5], "unshare");
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  topfd = open(argv[1], O_RDONLY | O_DIRECTORY);
  char *store;
  ndirs = list(topfd, &dirs, &store);
  pthread_t th[16];
  for (int i = 0; i < nthreads; i++) pthread_create(&th[i], NULL, worker, NULL);
  for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  struct rusage ru; getrusage(RUSAGE_SELF, &ru);
  double cpu = ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  printf("%s t=%d b=%d %s %.3f s cpu %.3f errs=%ld\n", mode, nthreads, batch, do_unshare ? "unshare" : "shared", s, cpu, (long)errs);
  return errs != 0;
}
