package pattern

import (
	"bytes"
	"io"
	"testing"
	"testing/iotest"
)

func TestByte(t *testing.T) {
	for _, tc := range []struct {
		kind Kind
		i    int64
		want byte
	}{
		{Text, 0, '0'},
		{Text, 1, '1'},
		{Text, 10, 'a'},
		{Text, 61, 'Z'},
		{Text, 62, '0'}, // 63 characters from 62: the last one wraps
		{Text, 63, '\n'},
		{Text, 64, '1'}, // line 1 starts one character later
		{Text, 64 + 61, '0'},
		{Text, 127, '\n'},
		{Text, 61 * 64, 'Z'},
		{Text, 62 * 64, '0'}, // line 62 starts like line 0
		{Binary, 0, 0},
		{Binary, 255, 255},
		{Binary, 256, 1}, // block 1 is rotated by one
		{Binary, 511, 0},
		{Binary, 256 * 256, 0},
		{NoNewline, 0, '0'},
		{NoNewline, 61, 'Z'},
		{NoNewline, 62, '0'},
		{NoNewline, 64, '2'},
	} {
		if got := Byte(tc.kind, tc.i); got != tc.want {
			t.Errorf("Byte(%v, %d) = %q, want %q", tc.kind, tc.i, got, tc.want)
		}
	}
}

func TestPatternProperties(t *testing.T) {
	const n = 1 << 20
	text := Bytes(Text, n)
	if c := bytes.Count(text, []byte{'\n'}); c != n/LineLen {
		t.Errorf("text: %d newlines, want %d", c, n/LineLen)
	}
	for l := 0; l+1 < n/LineLen; l++ {
		if bytes.Equal(text[l*LineLen:(l+1)*LineLen], text[(l+1)*LineLen:(l+2)*LineLen]) {
			t.Fatalf("text lines %d and %d are equal", l, l+1)
		}
	}
	bin := Bytes(Binary, n)
	for blk := 0; blk < n/256; blk++ {
		var seen [256]bool
		for _, b := range bin[blk*256 : (blk+1)*256] {
			seen[b] = true
		}
		for v, ok := range seen {
			if !ok {
				t.Fatalf("binary block %d lacks byte value %d", blk, v)
			}
		}
	}
	if bytes.IndexByte(Bytes(NoNewline, n), '\n') >= 0 {
		t.Error("no-newline pattern contains a newline")
	}
}

func TestReaderWriteCheck(t *testing.T) {
	for _, k := range []Kind{Text, Binary, NoNewline} {
		for _, n := range []int64{0, 1, 63, 64, 65, 255, 256, 257, 100000} {
			want := Bytes(k, n)
			// One byte at a time must give the same stream as one big read.
			got, err := io.ReadAll(iotest.OneByteReader(NewReader(k, n)))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%v %d: one-byte reader differs (err %v)", k, n, err)
			}
			var buf bytes.Buffer
			if w, err := Write(&buf, k, n); err != nil || w != n || !bytes.Equal(buf.Bytes(), want) {
				t.Fatalf("%v %d: Write wrote %d, err %v", k, n, w, err)
			}
			if err := Check(k, n, want); err != nil {
				t.Fatalf("%v %d: Check: %v", k, n, err)
			}
			if !Equal(k, n, want) {
				t.Fatalf("%v %d: Equal false", k, n)
			}
			if n > 0 {
				bad := append([]byte(nil), want...)
				bad[n/2] ^= 0xff
				if Check(k, n, bad) == nil || Equal(k, n, bad) {
					t.Fatalf("%v %d: corrupted byte not detected", k, n)
				}
				if Check(k, n, want[:n-1]) == nil {
					t.Fatalf("%v %d: short stream not detected", k, n)
				}
			}
		}
	}
}
