package ctrd

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fnlet/fnlet/internal/testenv"
)

// TestRunPastStuckShim: the shim socket of the call's container ID is held
// by a shim daemon stuck opening its log FIFO, as containerd leaves one when
// the client dies during "shim start" (docs/runtime.md, "Stuck shims"). Run
// must not hang on it: the create times out, the container moves to a new
// shim, and the call runs once. On containerd 1.x the new shim is blocked
// too, and Run fails with ErrStaleBundle instead.
func TestRunPastStuckShim(t *testing.T) {
	addr := daemonAddress(t)
	rt := newTestRuntime(t, "", WithCreateTimeout(3*time.Second))
	call := testCall(t, "-stdout-text", "once")
	id := ContainerID(call.UID)
	stuck := startStuckShim(t, addr, testNS, id)

	ctx := ctxTimeout(t, 90*time.Second)
	if _, err := rt.EnsureImage(ctx, call.Image, PullNever, nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := rt.Run(ctx, call)
	if v, verr := rt.Version(ctx); verr == nil && strings.HasPrefix(strings.TrimPrefix(v, "v"), "1.") {
		// containerd 1.x keeps the timed-out create's task directory while
		// the stuck daemon lives, so the new shim cannot start either: Run
		// must fail with the precise reason, not hang (docs/runtime.md,
		// "Stuck shims").
		if !errors.Is(err, ErrStaleBundle) {
			t.Fatalf("containerd %s: Run = %v, want ErrStaleBundle", v, err)
		}
		t.Logf("containerd %s: Run failed after %s with the documented limitation: %v", v, time.Since(start).Round(time.Millisecond), err)
		mustDelete(t, rt, call.UID)
		return
	}
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("Run took %s past the stuck shim", time.Since(start).Round(time.Millisecond))
	s, err := rt.Wait(ctx, call.UID)
	if err != nil {
		t.Fatal(err)
	}
	if s.Result == nil || s.Result.ExitCode != 0 || string(s.Result.Stdout.Data) != "once\n" {
		t.Fatalf("result %+v", s.Result)
	}
	spec, err := rt.handle(id).container.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Annotations[shimGroupAnnotation] == "" {
		t.Errorf("the container was not moved to a new shim group (annotations %v): the create never reached the stuck shim", spec.Annotations)
	}
	if n := rt.CreateTimeouts(); n != 1 {
		t.Errorf("CreateTimeouts() = %d, want 1", n)
	}
	select {
	case err := <-stuck:
		t.Errorf("the stuck shim ended (%v): the create did not go around it", err)
	default:
	}
	mustDelete(t, rt, call.UID)
}

// startStuckShim starts the daemon of the runc shim that containerd at addr
// would use, in the state containerd leaves when "shim start" is killed
// after spawning it: listening on the socket of (namespace, id) with no
// reader on its log FIFO. It returns once the daemon blocks on that FIFO;
// the channel yields the daemon's exit.
func startStuckShim(t *testing.T, addr, ns, id string) <-chan error {
	t.Helper()
	shim := shimBinaryOf(t, addr)
	sockDir := "/run/containerd/s"
	if err := os.MkdirAll(sockDir, 0o711); err != nil {
		t.Fatal(err)
	}
	// The runc shim's socket for (containerd address, namespace, group).
	sock := filepath.Join(sockDir, fmt.Sprintf("%x", sha256.Sum256([]byte(filepath.Join(addr, ns, id)))))
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	lf, err := l.File()
	l.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(sock) })
	dir := t.TempDir()
	if err := unix.Mkfifo(filepath.Join(dir, "log"), 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(shim, "-namespace", ns, "-id", id, "-address", addr)
	cmd.Dir = dir
	cmd.ExtraFiles = []*os.File{lf}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lf.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	pid := cmd.Process.Pid
	poll(t, 10*time.Second, fmt.Sprintf("shim %s (pid %d) blocks on its log FIFO", shim, pid), func() bool { return testenv.WaitsOnFIFO(strconv.Itoa(pid)) })
	return done
}

// shimBinaryOf finds the runc shim beside the containerd serving addr (the
// daemon's PID from the socket's peer credentials).
func shimBinaryOf(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		t.Fatalf("peer of %s: %v %v", addr, err, cerr)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", cred.Pid))
	if err != nil {
		t.Fatal(err)
	}
	shim := filepath.Join(filepath.Dir(exe), "containerd-shim-runc-v2")
	if _, err := os.Stat(shim); err != nil {
		t.Fatalf("runc shim of containerd %s: %v", exe, err)
	}
	return shim
}
