package logapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"time"
)

// Query is what a log request asks for: one stream of one call, from a
// byte offset or its last TailBytes bytes, and whether to follow it.
type Query struct {
	Stream    string // "stdout" or "stderr"
	Offset    int64  // first byte to send
	TailBytes int64  // >= 0: only the last TailBytes bytes (then Offset is 0)
	Follow    bool
}

// parseQuery reads ?stream=stdout|stderr&offset=N&tailBytes=N&follow=true.
// offset and tailBytes exclude each other: "the last N bytes after byte
// M" has no single answer for a growing file.
func parseQuery(v url.Values) (Query, error) {
	q := Query{Stream: "stdout", TailBytes: -1}
	if s := v.Get("stream"); s != "" {
		if s != "stdout" && s != "stderr" {
			return q, fmt.Errorf("stream must be stdout or stderr, not %q", s)
		}
		q.Stream = s
	}
	var err error
	if s := v.Get("offset"); s != "" {
		if q.Offset, err = strconv.ParseInt(s, 10, 64); err != nil || q.Offset < 0 {
			return q, fmt.Errorf("offset must be a non-negative integer, not %q", s)
		}
	}
	if s := v.Get("tailBytes"); s != "" {
		if q.TailBytes, err = strconv.ParseInt(s, 10, 64); err != nil || q.TailBytes < 0 {
			return q, fmt.Errorf("tailBytes must be a non-negative integer, not %q", s)
		}
		if v.Get("offset") != "" {
			return q, errors.New("offset and tailBytes cannot be used together")
		}
	}
	if s := v.Get("follow"); s != "" {
		if q.Follow, err = strconv.ParseBool(s); err != nil {
			return q, fmt.Errorf("follow must be true or false, not %q", s)
		}
	}
	return q, nil
}

// start is the first byte to send of a stream that holds size bytes now.
// An offset past the end is kept: a follow waits for that byte.
func (q Query) start(size int64) int64 {
	if q.TailBytes >= 0 {
		return max(0, size-q.TailBytes)
	}
	return q.Offset
}

// follower copies a growing file to a client until the call ends. The
// file is appended to by the shim only; nothing here writes anywhere but
// to the client, so following costs the apiserver nothing.
type follower struct {
	// ended reports whether the call has ended: no byte will be added
	// after a true answer (the process and its IO are gone).
	ended func(context.Context) bool
	// wake fires when the file may have grown (inotify); nil polls only.
	wake <-chan struct{}
	// poll bounds the wait between checks when no wake arrives.
	poll time.Duration
}

// copyFrom sends f from byte at to w, flushing after each chunk, until the
// call has ended and every byte written before that was sent, or ctx ends.
// It returns the offset after the last byte sent.
func (fl follower) copyFrom(ctx context.Context, f *os.File, at int64, w io.Writer, flush func()) (int64, error) {
	buf := make([]byte, 256<<10)
	t := time.NewTimer(fl.poll)
	defer t.Stop()
	for {
		// Ask first, drain after: bytes written before the end are sent.
		done := fl.ended(ctx)
		for {
			n, err := f.ReadAt(buf, at)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return at, werr
				}
				at += int64(n)
				flush()
			}
			if errors.Is(err, io.EOF) || n == 0 {
				break
			}
			if err != nil {
				return at, err
			}
		}
		if done {
			return at, nil
		}
		t.Reset(fl.poll)
		select {
		case <-ctx.Done():
			return at, ctx.Err()
		case <-fl.wake:
		case <-t.C:
		}
	}
}

// copyRange sends f from byte at to its current end (no follow).
func copyRange(f *os.File, at int64, w io.Writer) (int64, error) {
	return io.Copy(w, io.NewSectionReader(f, at, 1<<62))
}
