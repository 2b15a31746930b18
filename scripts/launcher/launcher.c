/*
 * The file the kubelet executes: a static (musl) launcher in front of a PyInstaller one-dir bundle.
 *
 * Why: the bundle's ELF files are linked against the build machine's glibc, which is newer than the
 * C library of most Kubernetes nodes. The bundle therefore carries its own dynamic loader and glibc in
 * _internal/, and this launcher, which needs nothing from the host, starts the PyInstaller bootloader
 * through that loader:
 *
 *   <bundle>/_internal/ld-linux-x86-64.so.2 --library-path <bundle>/_internal <bundle>/<name>.bootloader ARGS
 *
 * The bundle is found from /proc/self/exe, so a symlink to the launcher (the installer's) keeps working.
 * The bootloader sees /proc/self/exe pointing at a loader named ld-*.so.N, takes its own path from argv[0]
 * and restarts itself through the same loader with LD_LIBRARY_PATH set to _internal (PyInstaller's
 * bootloader, pyi_main.c). The caller's LD_LIBRARY_PATH and LD_PRELOAD would follow the bundle's
 * directory in that restart, so they are moved aside into MGW_CALLER_LD_LIBRARY_PATH and
 * MGW_CALLER_LD_PRELOAD; cni/frozen.py puts them back for child processes (modprobe).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOADER "ld-linux-x86-64.so.2"
#define CONTENTS "_internal"
#define BOOTLOADER_SUFFIX ".bootloader"
#define EXIT_CANNOT_START 127

static int fail(const char *what, const char *path)
{
    dprintf(STDERR_FILENO, "microgateway launcher: %s %s: %s\n", what, path, strerror(errno));
    return EXIT_CANNOT_START;
}

/* Move NAME to MGW_CALLER_<NAME>, so that only the bundle's libraries are found, but children get it back. */
static int set_aside(const char *name)
{
    char stash[64];
    const char *value = getenv(name);
    snprintf(stash, sizeof stash, "MGW_CALLER_%s", name);
    if (value == NULL) {
        return unsetenv(stash);
    }
    if (setenv(stash, value, 1) != 0 || unsetenv(name) != 0) {
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    char self[PATH_MAX], loader[PATH_MAX], libdir[PATH_MAX], bootloader[PATH_MAX];
    ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
    if (length < 0) {
        return fail("cannot resolve", "/proc/self/exe");
    }
    self[length] = '\0';
    char *slash = strrchr(self, '/');
    if (slash == NULL) {
        errno = ENOENT;
        return fail("unexpected path", self);
    }
    *slash = '\0';
    const char *name = slash + 1;
    if (snprintf(loader, sizeof loader, "%s/%s/%s", self, CONTENTS, LOADER) >= (int)sizeof loader
        || snprintf(libdir, sizeof libdir, "%s/%s", self, CONTENTS) >= (int)sizeof libdir
        || snprintf(bootloader, sizeof bootloader, "%s/%s%s", self, name, BOOTLOADER_SUFFIX) >= (int)sizeof bootloader) {
        errno = ENAMETOOLONG;
        return fail("path too long:", self);
    }
    if (set_aside("LD_LIBRARY_PATH") != 0 || set_aside("LD_PRELOAD") != 0) {
        return fail("cannot set", "environment");
    }
    char **args = calloc((size_t)argc + 4, sizeof *args);
    if (args == NULL) {
        return fail("cannot allocate", "arguments");
    }
    args[0] = loader;
    args[1] = "--library-path";
    args[2] = libdir;
    args[3] = bootloader;
    for (int i = 1; i < argc; i++) {
        args[i + 3] = argv[i];
    }
    execv(loader, args);
    return fail("cannot execute", loader);
}
