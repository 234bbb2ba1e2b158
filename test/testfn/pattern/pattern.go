// Package pattern generates the deterministic byte streams that fnlet-testfn
// writes for -stdout-bytes, -stderr-bytes and -no-newline-bytes, so that tests
// can regenerate the expected output and compare it byte for byte.
//
// Every stream is a pure function of the byte offset: the byte at offset i of
// a stream of any length is Byte(kind, i), so a prefix of a longer stream is
// the shorter stream, and a dropped, duplicated or reordered chunk shows up as
// a mismatch at a precise offset.
//
//   - Text: lines of 64 bytes, 63 characters from Alphabet followed by '\n'.
//     Character j (0..62) of line l is Alphabet[(l+j) % 62], so every line is
//     different from its neighbours.
//   - Binary: all 256 byte values in every aligned 256-byte block; block b is
//     0..255 rotated by b, i.e. byte i is byte(i%256 + i/256).
//   - NoNewline: Alphabet repeated, never a '\n': byte i is Alphabet[i % 62].
package pattern

import (
	"bytes"
	"fmt"
	"io"
)

// Alphabet holds the characters of the text patterns.
const Alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

// LineLen is the length of a Text line, newline included.
const LineLen = 64

// Kind selects a pattern.
type Kind int

const (
	Text Kind = iota
	Binary
	NoNewline
)

func (k Kind) String() string {
	switch k {
	case Text:
		return "text"
	case Binary:
		return "binary"
	case NoNewline:
		return "no-newline"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Byte returns the byte at offset i of the pattern.
func Byte(k Kind, i int64) byte {
	switch k {
	case Binary:
		return byte(i%256 + i/256)
	case NoNewline:
		return Alphabet[i%int64(len(Alphabet))]
	default:
		j := i % LineLen
		if j == LineLen-1 {
			return '\n'
		}
		return Alphabet[(i/LineLen+j)%int64(len(Alphabet))]
	}
}

// Fill writes the pattern bytes for offsets off..off+len(buf)-1 into buf.
func Fill(k Kind, off int64, buf []byte) {
	for n := range buf {
		buf[n] = Byte(k, off+int64(n))
	}
}

// Bytes returns the first n bytes of the pattern.
func Bytes(k Kind, n int64) []byte {
	b := make([]byte, n)
	Fill(k, 0, b)
	return b
}

// Write writes the first n bytes of the pattern to w in chunks of up to 64 KiB.
func Write(w io.Writer, k Kind, n int64) (int64, error) {
	return io.Copy(w, NewReader(k, n))
}

// NewReader returns a reader of the first n bytes of the pattern.
func NewReader(k Kind, n int64) io.Reader { return &reader{k: k, n: n} }

type reader struct {
	k      Kind
	off, n int64
}

func (r *reader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	if rest := r.n - r.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	Fill(r.k, r.off, p)
	r.off += int64(len(p))
	return len(p), nil
}

// Check reports nil if got is exactly the first n bytes of the pattern, else
// an error describing the first difference (offset and surrounding bytes).
func Check(k Kind, n int64, got []byte) error {
	for i := int64(0); i < int64(len(got)) && i < n; i++ {
		if want := Byte(k, i); got[i] != want {
			lo := max(i-8, 0)
			hi := min(i+8, int64(len(got)))
			return fmt.Errorf("%s pattern: byte %d is %q, want %q (got %q around it)",
				k, i, got[i], want, got[lo:hi])
		}
	}
	if int64(len(got)) != n {
		return fmt.Errorf("%s pattern: got %d bytes, want %d", k, len(got), n)
	}
	return nil
}

// Equal reports whether got is exactly the first n bytes of the pattern.
func Equal(k Kind, n int64, got []byte) bool {
	return int64(len(got)) == n && bytes.Equal(got, Bytes(k, n))
}
