package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/fnlet/fnlet/test/testfn/pattern"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"0", 0, false},
		{"100", 100, false},
		{"4k", 4096, false},
		{"4K", 4096, false},
		{"4KiB", 4096, false},
		{"1M", 1 << 20, false},
		{"3MiB", 3 << 20, false},
		{"2G", 2 << 30, false},
		{"1GiB", 1 << 30, false},
		{"", 0, true},
		{"-1", 0, true},
		{"1.5M", 0, true},
		{"1T", 0, true},
		{"k", 0, true},
		{"99999999999999G", 0, true},
	} {
		got, err := parseSize(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		check   func(*config) bool
		wantErr string
	}{
		{"defaults", nil, func(c *config) bool {
			return c.exit == 0 && c.forkBombMax == 512 && c.spinProcs == 1 && !c.stdoutText.set && c.stdoutBytes == 0
		}, ""},
		{"all combined", []string{"-stdin-echo", "-stdout-bytes", "1M", "-stderr-bytes", "10", "-alloc-mib", "4",
			"-spin", "2s", "-sleep", "3s", "-print-env", "-print-cwd", "-print-uid", "-fork-children", "2", "-exit", "3",
			"-binary", "-trap-term", "-close-stdout", "-no-newline-bytes", "7", "-stdin-sha256", "-fork-bomb"},
			func(c *config) bool {
				return c.stdinEcho && c.stdoutBytes == 1<<20 && c.stderrBytes == 10 && c.allocMiB == 4 &&
					c.spin == 2*time.Second && c.sleep == 3*time.Second && c.printEnv && c.printCwd && c.printUID &&
					c.forkN == 2 && c.exit == 3 && c.binary && c.trapTerm && c.closeStdout && c.noNLBytes == 7 &&
					c.stdinSHA256 && c.forkBomb
			}, ""},
		{"empty text is set", []string{"-stdout-text", ""}, func(c *config) bool { return c.stdoutText.set && c.stdoutText.s == "" }, ""},
		{"text with spaces", []string{"-stdout-text", "hello world", "-stderr-text=oops"}, func(c *config) bool {
			return c.stdoutText.s == "hello world" && c.stderrText.set && c.stderrText.s == "oops"
		}, ""},
		{"double dash form", []string{"--exit=7"}, func(c *config) bool { return c.exit == 7 }, ""},
		{"unknown flag", []string{"-nope"}, nil, "flag provided but not defined"},
		{"positional", []string{"-exit", "1", "extra"}, nil, "unexpected argument"},
		{"bad size", []string{"-stdout-bytes", "lots"}, nil, "invalid size"},
		{"exit range", []string{"-exit", "256"}, nil, "-exit must be"},
		{"negative alloc", []string{"-alloc-mib", "-1"}, nil, "-alloc-mib"},
		{"bad duration", []string{"-sleep", "3"}, nil, "invalid value"},
		{"spin procs", []string{"-spin-procs", "0"}, nil, "-spin-procs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseArgs(tc.args, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Fatalf("unexpected config %+v", c)
			}
		})
	}
}

// TestRunOutput runs the output actions with buffers and checks the exact
// bytes and their documented order.
func TestRunOutput(t *testing.T) {
	stdin := "some input\x00\xff"
	sum := sha256.Sum256([]byte(stdin))
	text := string(pattern.Bytes(pattern.Text, 100))
	bin := string(pattern.Bytes(pattern.Binary, 300))
	nonl := strings.Repeat(pattern.Alphabet, 2)[:70]
	for _, tc := range []struct {
		name       string
		args       []string
		wantOut    string
		wantErr    string
		wantClosed bool
	}{
		{"nothing", nil, "", "", false},
		{"text", []string{"-stdout-text", "hi"}, "hi\n", "", false},
		{"empty text", []string{"-stdout-text="}, "\n", "", false},
		{"stderr text", []string{"-stderr-text", "err"}, "", "err\n", false},
		{"stdout bytes", []string{"-stdout-bytes", "100"}, text, "", false},
		{"binary both", []string{"-binary", "-stdout-bytes", "300", "-stderr-bytes", "300"}, bin, bin, false},
		{"no newline", []string{"-no-newline-bytes", "70"}, nonl, "", false},
		{"echo", []string{"-stdin-echo"}, stdin, "", false},
		{"sha", []string{"-stdin-sha256"}, fmt.Sprintf("stdin-sha256=%x stdin-bytes=%d\n", sum, len(stdin)), "", false},
		{"order", []string{"-no-newline-bytes", "70", "-stdout-bytes", "100", "-stdout-text", "T", "-print-args",
			"-stdin-sha256", "-stdin-echo", "-close-stdout"},
			stdin + fmt.Sprintf("stdin-sha256=%x stdin-bytes=%d\n", sum, len(stdin)) + `args=["testfn","x y"]` + "\nT\n" + text + nonl,
			"", true},
		{"alloc", []string{"-alloc-mib", "3"}, "alloc-mib=3\n", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseArgs(tc.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			closed := false
			p := &proc{
				args:        []string{"testfn", "x y"},
				stdin:       strings.NewReader(stdin),
				stdout:      &out,
				stderr:      &errb,
				closeStdout: func() error { closed = true; return nil },
			}
			if err := run(c, p); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.wantOut {
				t.Errorf("stdout = %q\nwant     %q", out.String(), tc.wantOut)
			}
			if errb.String() != tc.wantErr {
				t.Errorf("stderr = %q\nwant     %q", errb.String(), tc.wantErr)
			}
			if closed != tc.wantClosed {
				t.Errorf("stdout closed = %v, want %v", closed, tc.wantClosed)
			}
		})
	}
}

func TestAllocTouch(t *testing.T) {
	chunks := allocTouch(2)
	if len(chunks) != 2 || len(chunks[0]) != 1<<20 || chunks[1][0] != 1 {
		t.Fatalf("allocTouch(2): %d chunks", len(chunks))
	}
}
