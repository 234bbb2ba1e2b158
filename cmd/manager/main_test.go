package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindInit(t *testing.T) {
	present := filepath.Join(t.TempDir(), "fnlet-init")
	if err := os.WriteFile(present, []byte("\x7fELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, flag, want, wantErr string
	}{
		{name: "disabled", flag: "none", want: ""},
		{name: "explicit", flag: present, want: present},
		{name: "explicit but missing", flag: present + "-nope", wantErr: "--init-binary"},
		// The test binary has no fnlet-init beside it: run without, with a warning.
		{name: "default, none beside the executable", flag: "", want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := findInit(tc.flag)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got (%q, %v), want %q", got, err, tc.want)
			}
		})
	}
}
