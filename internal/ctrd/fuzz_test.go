package ctrd

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Fuzz tests. In a normal `go test` run they run their seeds (f.Add and
// testdata/fuzz/<name>/); to fuzz, e.g.:
//
//	go test ./internal/ctrd -run '^$' -fuzz '^FuzzSpecOpts$' -fuzztime 20s

// fuzzList turns one fuzzed string into a list: "" is no list, otherwise
// the parts between newlines (so empty elements are possible).
func fuzzList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// wantProcessArgs is the Kubernetes rule, written independently of
// processArgs: command replaces the entrypoint and drops the image cmd;
// args alone replace the image cmd.
func wantProcessArgs(entrypoint, cmd, command, args []string) []string {
	if len(command) == 0 {
		command = entrypoint
		if len(args) == 0 {
			args = cmd
		}
	}
	return slices.Concat(command, args)
}

func validArgs(args []string) bool {
	return len(args) > 0 && args[0] != "" && !slices.ContainsFunc(args, func(a string) bool { return strings.ContainsRune(a, 0) })
}

// wantUser is the user rule: the call's user (in range), else a numeric
// image user[:group], else root; ok is false when BuildSpec must refuse.
func wantUser(imageUser string, u *User) (uid, gid uint32, ok bool) {
	if u != nil {
		if u.UID < 0 || u.GID < 0 || u.UID > 1<<31 || u.GID > 1<<31 {
			return 0, 0, false
		}
		return uint32(u.UID), uint32(u.GID), true
	}
	if imageUser == "" {
		return 0, 0, true
	}
	name, group, hasGroup := strings.Cut(imageUser, ":")
	n, err := strconv.ParseUint(name, 10, 32)
	if err != nil {
		return 0, 0, false
	}
	g := n
	if hasGroup && group != "" {
		if g, err = strconv.ParseUint(group, 10, 32); err != nil {
			return 0, 0, false
		}
	}
	return uint32(n), uint32(g), true
}

func FuzzSpecOpts(f *testing.F) {
	// command, args, entrypoint, cmd, env, workdir, image workdir, image user,
	// has call user, uid, gid, name
	f.Add("", "", "/testfn", "", "", "", "", "", false, int64(0), int64(0), "fn")
	f.Add("", "-exit\n3", "/testfn", "-sleep\n1s", "FOO=bar\nPATH=/x", "/tmp", "/app", "1000:50", false, int64(0), int64(0), "fn")
	f.Add("/bin/sh\n-c", "echo hi", "/testfn", "", "A\nB=", "", "/", "app", true, int64(1000), int64(1000), "")
	f.Add("", "", "", "", "", "", "", "", false, int64(0), int64(0), "")
	f.Add("\n", "x", "", "", "=x", "", "", "1000:staff", false, int64(0), int64(0), "é"+strings.Repeat("ü", 40))
	f.Add("a\x00b", "", "", "", "", "", "", "", true, int64(-1), int64(1<<40), "n")
	f.Add("", "x\x00", "/e", "", "", "rel/dir", "", ":", false, int64(0), int64(0), "n")
	f.Add("", "", "", "/bin/true", "", "", "", "4294967295:0", false, int64(0), int64(0), "n")
	f.Fuzz(func(t *testing.T, command, args, entrypoint, cmd, env, workdir, imageWorkdir, imageUser string,
		hasUser bool, uid, gid int64, name string) {
		img := ocispec.ImageConfig{
			Entrypoint: fuzzList(entrypoint),
			Cmd:        fuzzList(cmd),
			Env:        fuzzList(env),
			WorkingDir: imageWorkdir,
			User:       imageUser,
		}
		call := Call{UID: "fuzz", Name: name, Image: testfnImage,
			Command: fuzzList(command), Args: fuzzList(args), Env: fuzzList(env), WorkingDir: workdir}
		if hasUser {
			call.User = &User{UID: uid, GID: gid}
		}
		resolved := wantProcessArgs(img.Entrypoint, img.Cmd, call.Command, call.Args)
		wantUID, wantGID, userOK := wantUser(imageUser, call.User)

		s, err := BuildSpec(context.Background(), testNS, call, img, Policy{})
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("error is not InvalidArgument: %v", err)
			}
			if validArgs(resolved) && userOK {
				t.Fatalf("valid call refused: args %q user %q/%v: %v", resolved, imageUser, call.User, err)
			}
			return
		}
		if !validArgs(resolved) || !userOK {
			t.Fatalf("invalid call accepted: args %q user %q/%v", resolved, imageUser, call.User)
		}
		if !slices.Equal(s.Process.Args, resolved) {
			t.Fatalf("args = %q, want %q", s.Process.Args, resolved)
		}
		if want := firstNonEmpty(workdir, imageWorkdir, "/"); s.Process.Cwd != want {
			t.Fatalf("cwd = %q, want %q", s.Process.Cwd, want)
		}
		if s.Process.User.UID != wantUID || s.Process.User.GID != wantGID {
			t.Fatalf("user = %d:%d, want %d:%d", s.Process.User.UID, s.Process.User.GID, wantUID, wantGID)
		}
		if s.Linux.Seccomp == nil || !s.Process.NoNewPrivileges || slices.Contains(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN") {
			t.Fatal("secure defaults lost")
		}
		if len(s.Hostname) > 63 {
			t.Fatalf("hostname longer than 63 bytes: %q", s.Hostname)
		}
	})
}

func FuzzNormalizeImageRef(f *testing.F) {
	for _, s := range []string{
		"", "busybox", "registry.example:5000/team/fn:v1", "localhost/fnlet/testfn:v1",
		"registry.example/fn@" + testDigest, "registry.example/fn:v1@" + testDigest,
		"Registry.Example/Fn", "a/b/c/d:e", "[::1]:5000/fn:v1", "fn:", "@", ":", "/",
		"registry.example/fn:" + strings.Repeat("t", 129),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		out, err := NormalizeImageRef(ref)
		if err != nil {
			if out != "" {
				t.Fatalf("error %v with output %q", err, out)
			}
			return
		}
		domain, rest, ok := strings.Cut(out, "/")
		if !ok || domain == "" || rest == "" {
			t.Fatalf("%q -> %q: no domain/path", ref, out)
		}
		if !strings.Contains(rest, "@") && !strings.Contains(rest, ":") {
			t.Fatalf("%q -> %q: neither tag nor digest", ref, out)
		}
		again, err := NormalizeImageRef(out)
		if err != nil || again != out {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", ref, out, again, err)
		}
		if hostOfRef(out) != domain {
			t.Fatalf("hostOfRef(%q) = %q, want %q (credentials would be looked up under the wrong host)", out, hostOfRef(out), domain)
		}
	})
}

func FuzzParseDockerConfigJSON(f *testing.F) {
	for _, s := range []string{
		`{"auths":{"registry.example:5000":{"auth":"` + b64("alice:s3cret") + `"}}}`,
		`{"auths":{"https://registry.example/v1/":{"username":"u","password":"p"}}}`,
		`{"auths":{"registry.example/team":{"username":"u","password":"p","auth":"` + b64("a:b") + `"}}}`,
		`{"auths":{"registry.example":{"auth":"%%%"}}}`,
		`{"auths":{"":{}}}`,
		`{"auths":{"https:///":{}}}`,
		`{"auths":{}}`,
		`{"auths":null}`,
		`{}`,
		`[]`,
		``,
		`{"auths":{"a":{"auth":"` + b64(":") + `"}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		auth, err := ParseDockerConfigJSON(data)
		if err != nil {
			if auth != nil {
				t.Fatalf("error %v with a result %v", err, auth)
			}
			return
		}
		if auth == nil {
			t.Fatal("nil map without an error")
		}
		for host := range auth {
			if host == "" || strings.Contains(host, "/") {
				t.Fatalf("bad host key %q", host)
			}
		}
		// What we parsed, written back as username/password, parses to the
		// same. JSON strings cannot carry invalid UTF-8 (a base64 "auth" can),
		// so such credentials are not round-tripped.
		for _, c := range auth {
			if !utf8.ValidString(c.Username) || !utf8.ValidString(c.Password) {
				return
			}
		}
		type entry struct {
			Username string `json:"username"`
			Password string `json:"password"`
		}
		cfg := struct {
			Auths map[string]entry `json:"auths"`
		}{Auths: map[string]entry{}}
		for h, c := range auth {
			cfg.Auths[h] = entry(c)
		}
		b, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseDockerConfigJSON(b)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", b, err)
		}
		if !maps.Equal(auth, again) {
			t.Fatalf("round trip: %v -> %v", auth, again)
		}
	})
}
