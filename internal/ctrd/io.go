package ctrd

import (
	"context"
	"fmt"
	"io"
	"syscall"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
)

// The shim, not this process, owns a call's IO: it opens the files of the
// call's directory (see callDir) itself. Nothing here copies bytes, so a
// manager crash loses no output and a program never blocks on a pipe nobody
// reads. The one exception is a FIFO stdin (StdinFIFO), fed by feedStdin.

// shimIO hands containerd fixed paths and owns no copy goroutines: the shim
// does all the IO, so there is nothing to wait for or cancel here.
type shimIO struct{ cfg cio.Config }

func (s *shimIO) Config() cio.Config { return s.cfg }
func (s *shimIO) Cancel()            {}
func (s *shimIO) Wait()              {}
func (s *shimIO) Close() error       { return nil }

func shimCreator(cfg cio.Config) cio.Creator {
	return func(string) (cio.IO, error) { return &shimIO{cfg: cfg}, nil }
}

// attachShimIO re-attaches to a task whose IO the shim owns: nothing to
// open, and no FIFO directory is left behind (unlike cio.NewAttach).
func attachShimIO(set *cio.FIFOSet) (cio.IO, error) {
	if set == nil {
		return &shimIO{}, nil
	}
	return &shimIO{cfg: set.Config}, nil
}

// openStdinFIFO opens the write side of a FIFO stdin. It returns at once;
// writes block until the shim opens the read side.
func openStdinFIFO(ctx context.Context, path string) (io.WriteCloser, error) {
	w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open stdin fifo: %w", err)
	}
	return w, nil
}

// feedStdin writes the input into the FIFO, closes it and tells the shim
// (CloseIO), then records that the input is complete. The goroutine ends
// when the write ends: done, the program exited (EPIPE), or Close.
func (r *Runtime) feedStdin(h *callHandle, task client.Task, w io.WriteCloser, input []byte) {
	h.mu.Lock()
	h.feeding = true
	h.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() { h.mu.Lock(); h.feeding = false; h.mu.Unlock() }()
		_, werr := w.Write(input)
		w.Close()
		if werr != nil {
			return
		}
		ctx := r.ctx(r.bg)
		if err := task.CloseIO(ctx, client.WithStdinCloser); err != nil && !errdefs.IsNotFound(err) {
			return
		}
		_ = r.dir(h.id).mark(stdinDone)
	}()
}
