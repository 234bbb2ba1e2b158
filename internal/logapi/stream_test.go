package logapi

import (
	"bytes"
	"context"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func TestUnitParseQuery(t *testing.T) {
	for _, tc := range []struct {
		name, query string
		want        Query
		wantErr     bool
	}{
		{"defaults", "", Query{Stream: "stdout", TailBytes: -1}, false},
		{"stderr from an offset, followed", "stream=stderr&offset=10&follow=true", Query{Stream: "stderr", Offset: 10, TailBytes: -1, Follow: true}, false},
		{"tail", "tailBytes=100", Query{Stream: "stdout", TailBytes: 100}, false},
		{"tail zero", "tailBytes=0", Query{Stream: "stdout", TailBytes: 0}, false},
		{"bad stream", "stream=stdin", Query{}, true},
		{"negative offset", "offset=-1", Query{}, true},
		{"offset not a number", "offset=x", Query{}, true},
		{"negative tail", "tailBytes=-5", Query{}, true},
		{"offset and tail", "offset=1&tailBytes=1", Query{}, true},
		{"bad follow", "follow=maybe", Query{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, _ := url.ParseQuery(tc.query)
			got, err := parseQuery(v)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if err == nil && got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestUnitQueryStart(t *testing.T) {
	for _, tc := range []struct {
		name string
		q    Query
		size int64
		want int64
	}{
		{"whole", Query{TailBytes: -1}, 100, 0},
		{"offset inside", Query{Offset: 40, TailBytes: -1}, 100, 40},
		{"offset past the end is kept (a follow waits for it)", Query{Offset: 140, TailBytes: -1}, 100, 140},
		{"tail inside", Query{TailBytes: 30}, 100, 70},
		{"tail longer than the file", Query{TailBytes: 300}, 100, 0},
		{"tail zero: only what comes", Query{TailBytes: 0}, 100, 100},
		{"empty file", Query{TailBytes: 10}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.q.start(tc.size); got != tc.want {
				t.Errorf("start(%d) = %d, want %d", tc.size, got, tc.want)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer the follower writes and the test reads.
type syncBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
	got chan struct{} // a byte arrived
}

func newSyncBuffer() *syncBuffer {
	return &syncBuffer{mu: make(chan struct{}, 1), got: make(chan struct{}, 1)}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu <- struct{}{}
	n, err := b.buf.Write(p)
	<-b.mu
	select {
	case b.got <- struct{}{}:
	default:
	}
	return n, err
}

func (b *syncBuffer) String() string {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.String()
}

// waitFor waits until the buffer holds want, on the writes' signal.
func (b *syncBuffer) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for b.String() != want {
		select {
		case <-b.got:
		case <-deadline:
			t.Fatalf("follow sent %q, want %q", b.String(), want)
		}
	}
}

func TestUnitFollow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before string // in the file before the follow starts
		start  int64
		writes []string // appended while followed, each seen before the next
		want   string
	}{
		{"from the start", "ab", 0, []string{"cd", "ef"}, "abcdef"},
		{"from an offset", "abcd", 2, []string{"ef"}, "cdef"},
		{"empty at first", "", 0, []string{"x", "yz"}, "xyz"},
		{"offset reached only by later writes", "ab", 3, []string{"cd", "ef"}, "def"},
		{"nothing after the end", "abc", 3, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "stdout")
			if err := os.WriteFile(path, []byte(tc.before), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			w, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			var ended atomic.Bool
			// The follower wakes on the file's inotify events, and on the
			// test's signal that the call ended.
			inotify, stop := watchFile(path)
			defer stop()
			wake := make(chan struct{}, 1)
			poke := func() {
				select {
				case wake <- struct{}{}:
				default:
				}
			}
			go func() {
				for range inotify {
					poke()
				}
			}()
			out := newSyncBuffer()
			fl := follower{ended: func(context.Context) bool { return ended.Load() }, wake: wake, poll: time.Minute}
			type result struct {
				at  int64
				err error
			}
			done := make(chan result, 1)
			go func() {
				at, err := fl.copyFrom(context.Background(), f, tc.start, out, func() {})
				done <- result{at, err}
			}()
			sent := tc.before
			for _, s := range tc.writes {
				if _, err := w.WriteString(s); err != nil {
					t.Fatal(err)
				}
				sent += s
				if int64(len(sent)) > tc.start {
					out.waitFor(t, sent[tc.start:])
				}
			}
			// The last write lands just before the end is reported: it is
			// still sent (the follower drains after it sees the end).
			if _, err := w.WriteString("!"); err != nil {
				t.Fatal(err)
			}
			ended.Store(true)
			poke()
			var r result
			select {
			case r = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("follow did not end after the call ended")
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			if got, want := out.String(), tc.want+"!"; got != want {
				t.Errorf("sent %q, want %q", got, want)
			}
			if r.at != int64(len(sent)+1) {
				t.Errorf("ended at %d, want %d", r.at, len(sent)+1)
			}
		})
	}
}

func TestUnitFollowStopsWithClient(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stdout")
	if err := os.WriteFile(path, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	out := newSyncBuffer()
	done := make(chan error, 1)
	go func() {
		_, err := follower{ended: func(context.Context) bool { return false }, poll: time.Minute}.copyFrom(ctx, f, 0, out, func() {})
		done <- err
	}()
	out.waitFor(t, "a")
	cancel()
	select {
	case err := <-done:
		if err != context.Canceled {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not stop when the client left")
	}
}
