package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestRefTag(t *testing.T) {
	for _, tc := range []struct{ ref, tag, full string }{
		{"localhost/fnlet/busybox:v1", "v1", "localhost/fnlet/busybox:v1"},
		{"127.0.0.1:5443/fnlet/testfn:v1", "v1", "127.0.0.1:5443/fnlet/testfn:v1"},
		{"127.0.0.1:5443/fnlet/testfn", "latest", "127.0.0.1:5443/fnlet/testfn:latest"},
		{"localhost/x", "latest", "localhost/x:latest"},
		{"", "", ""},
		{"localhost/x@sha256:abc", "", ""},
		{"localhost/x:", "", ""},
	} {
		tag, full, err := refTag(tc.ref)
		if (err != nil) != (tc.tag == "") || tag != tc.tag || full != tc.full {
			t.Errorf("refTag(%q) = %q, %q, %v; want %q, %q", tc.ref, tag, full, err, tc.tag, tc.full)
		}
	}
}

func TestParseFlags(t *testing.T) {
	base := []string{"-rootfs", "r", "-ref", "localhost/a:b", "-out", "o.tar"}
	for _, tc := range []struct {
		name       string
		args       []string
		entrypoint []string
		cmd        []string
		env        []string
		wantErr    bool
	}{
		{"none", nil, nil, nil, nil, false},
		{"repeated", []string{"-entrypoint", "/bin/sh", "-entrypoint", "-c", "-cmd", "echo hi"}, []string{"/bin/sh", "-c"}, []string{"echo hi"}, nil, false},
		{"json", []string{"-entrypoint", `["/testfn","-x"]`, "-cmd", `["sh"]`}, []string{"/testfn", "-x"}, []string{"sh"}, nil, false},
		{"explicit empty", []string{"-entrypoint", "[]"}, []string{}, nil, nil, false},
		{"env", []string{"-env", "A=1", "-env", "B=2"}, nil, nil, []string{"A=1", "B=2"}, false},
		{"bad json", []string{"-cmd", `["x"`}, nil, nil, nil, true},
		{"bad label", []string{"-label", "nokey"}, nil, nil, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(append(append([]string{}, base...), tc.args...), io.Discard)
			if tc.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(o.Entrypoint, tc.entrypoint) || !reflect.DeepEqual(o.Cmd, tc.cmd) || !reflect.DeepEqual([]string(o.Env), tc.env) {
				t.Fatalf("entrypoint %#v cmd %#v env %#v", o.Entrypoint, o.Cmd, o.Env)
			}
		})
	}
	if _, err := parseFlags([]string{"-rootfs", "r"}, io.Discard); err == nil {
		t.Error("missing -ref/-out accepted")
	}
}

// makeRootfs builds a small tree with the file types mkimage must keep.
func makeRootfs(t *testing.T) string {
	t.Helper()
	r := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(r, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(r, "etc"), 0o755))
	must(os.Mkdir(filepath.Join(r, "tmp"), 0o755))
	must(os.Chmod(filepath.Join(r, "tmp"), 0o777|os.ModeSticky))
	must(os.WriteFile(filepath.Join(r, "bin", "tool"), []byte("#!/bin/sh\necho tool\n"), 0o755))
	must(os.Chmod(filepath.Join(r, "bin", "tool"), 0o755|os.ModeSetuid))
	must(os.Symlink("tool", filepath.Join(r, "bin", "alias")))
	must(os.Link(filepath.Join(r, "bin", "tool"), filepath.Join(r, "bin", "hard")))
	must(os.WriteFile(filepath.Join(r, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644))
	must(os.WriteFile(filepath.Join(r, "etc", "secret"), []byte("s"), 0o600))
	return r
}

func readTar(t *testing.T, r io.Reader) (map[string]*tar.Header, map[string][]byte, []string) {
	t.Helper()
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	var order []string
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		hdrs[h.Name], data[h.Name] = h, b
		order = append(order, h.Name)
	}
	return hdrs, data, order
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestBuildReadBack(t *testing.T) {
	rootfs := makeRootfs(t)
	out := filepath.Join(t.TempDir(), "img.tar")
	o := &Options{
		Rootfs: rootfs, Ref: "localhost/fnlet/test:v1", Out: out,
		Entrypoint: []string{"/bin/tool"}, Cmd: []string{"-x"}, Env: []string{"A=1"},
		WorkingDir: "/tmp", User: "1000:1000", Arch: "amd64", OS: "linux",
		Mtime: time.Unix(1700000000, 0).UTC(),
	}
	manDesc, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	hdrs, files, order := readTar(t, bytes.NewReader(raw))
	if want := []string{"oci-layout", "index.json", "blobs/", "blobs/sha256/"}; !reflect.DeepEqual(order[:4], want) {
		t.Errorf("tarball starts with %v, want %v", order[:4], want)
	}
	// Every blob is named by its digest.
	nblobs := 0
	for name, b := range files {
		if strings.HasPrefix(name, "blobs/sha256/") && hdrs[name].Typeflag == tar.TypeReg {
			nblobs++
			if got := digestOf(b); got != "sha256:"+strings.TrimPrefix(name, "blobs/sha256/") {
				t.Errorf("blob %s has digest %s", name, got)
			}
		}
	}
	if nblobs != 3 {
		t.Errorf("%d blobs, want 3", nblobs)
	}
	blob := func(d Descriptor) []byte {
		t.Helper()
		b, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
		if !ok {
			t.Fatalf("blob %s missing", d.Digest)
		}
		if int64(len(b)) != d.Size {
			t.Fatalf("blob %s: size %d, descriptor says %d", d.Digest, len(b), d.Size)
		}
		return b
	}

	var idx Index
	if err := json.Unmarshal(files["index.json"], &idx); err != nil {
		t.Fatal(err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != mediaTypeIndex || len(idx.Manifests) != 1 {
		t.Fatalf("index: %+v", idx)
	}
	md := idx.Manifests[0]
	if !reflect.DeepEqual(md, manDesc) {
		t.Errorf("index descriptor %+v, Build returned %+v", md, manDesc)
	}
	if md.Annotations[annotationContainerdName] != "localhost/fnlet/test:v1" || md.Annotations[annotationRefName] != "v1" {
		t.Errorf("annotations %v", md.Annotations)
	}
	if md.Platform == nil || md.Platform.Architecture != "amd64" || md.Platform.OS != "linux" {
		t.Errorf("platform %+v", md.Platform)
	}
	var man Manifest
	if err := json.Unmarshal(blob(md), &man); err != nil {
		t.Fatal(err)
	}
	if man.MediaType != mediaTypeManifest || man.Config.MediaType != mediaTypeConfig || len(man.Layers) != 1 || man.Layers[0].MediaType != mediaTypeLayer {
		t.Fatalf("manifest %+v", man)
	}
	var cfg ImageConfig
	if err := json.Unmarshal(blob(man.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	wantCC := ContainerConfig{
		User: "1000:1000", Env: []string{defaultPath, "A=1"}, Entrypoint: []string{"/bin/tool"},
		Cmd: []string{"-x"}, WorkingDir: "/tmp",
	}
	if !reflect.DeepEqual(cfg.Config, wantCC) || cfg.Architecture != "amd64" || cfg.OS != "linux" || cfg.Created != "2023-11-14T22:13:20Z" {
		t.Errorf("config %+v", cfg)
	}

	// The layer: diff ID matches, entries keep types and modes, owners and
	// times are normalised.
	gz, err := gzip.NewReader(bytes.NewReader(blob(man.Layers[0])))
	if err != nil {
		t.Fatal(err)
	}
	if gz.Name != "" || !gz.ModTime.IsZero() {
		t.Errorf("gzip header has name %q, mtime %v", gz.Name, gz.ModTime)
	}
	layerTar, err := io.ReadAll(gz)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != digestOf(layerTar) || cfg.RootFS.Type != "layers" {
		t.Errorf("diff ids %v, layer tar digest %s", cfg.RootFS.DiffIDs, digestOf(layerTar))
	}
	lh, ld, lorder := readTar(t, bytes.NewReader(layerTar))
	wantOrder := []string{"bin/", "bin/alias", "bin/hard", "bin/tool", "etc/", "etc/passwd", "etc/secret", "tmp/"}
	if !reflect.DeepEqual(lorder, wantOrder) {
		t.Errorf("layer entries %v, want %v", lorder, wantOrder)
	}
	for _, tc := range []struct {
		name string
		typ  byte
		mode int64
		link string
		data string
	}{
		{"bin/", tar.TypeDir, 0o755, "", ""},
		{"bin/alias", tar.TypeSymlink, 0o777, "tool", ""},
		{"bin/hard", tar.TypeReg, 0o4755, "", "#!/bin/sh\necho tool\n"},
		{"bin/tool", tar.TypeLink, 0o4755, "bin/hard", ""},
		{"etc/passwd", tar.TypeReg, 0o644, "", "root:x:0:0:root:/root:/bin/sh\n"},
		{"etc/secret", tar.TypeReg, 0o600, "", "s"},
		{"tmp/", tar.TypeDir, 0o1777, "", ""},
	} {
		h := lh[tc.name]
		if h == nil {
			t.Errorf("%s missing from layer", tc.name)
			continue
		}
		if h.Typeflag != tc.typ || h.Mode != tc.mode || h.Linkname != tc.link || string(ld[tc.name]) != tc.data {
			t.Errorf("%s: type %c mode %o link %q data %q; want %c %o %q %q", tc.name, h.Typeflag, h.Mode, h.Linkname, ld[tc.name], tc.typ, tc.mode, tc.link, tc.data)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || !h.ModTime.Equal(o.Mtime) {
			t.Errorf("%s: owner %d:%d (%q:%q) mtime %v", tc.name, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime)
		}
	}

	// Same tree, different file times and a different output path: the
	// same bytes.
	now := time.Now()
	filepath.Walk(rootfs, func(p string, fi os.FileInfo, _ error) error {
		if fi.Mode()&os.ModeSymlink == 0 {
			os.Chtimes(p, now, now)
		}
		return nil
	})
	o.Out = filepath.Join(t.TempDir(), "again.tar")
	manDesc2, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	raw2, err := os.ReadFile(o.Out)
	if err != nil {
		t.Fatal(err)
	}
	if manDesc2.Digest != manDesc.Digest || !bytes.Equal(raw, raw2) {
		t.Errorf("rebuild differs: %s vs %s", manDesc2.Digest, manDesc.Digest)
	}
	// No temporary files left beside the output.
	ents, _ := os.ReadDir(filepath.Dir(o.Out))
	if len(ents) != 1 {
		t.Errorf("output dir holds %d entries, want 1", len(ents))
	}
}

func TestBuildNoEntrypointDefaults(t *testing.T) {
	rootfs := makeRootfs(t)
	out := filepath.Join(t.TempDir(), "img.tar")
	o, err := parseFlags([]string{"-rootfs", rootfs, "-ref", "localhost/fnlet/x", "-out", out, "-cmd", "sh", "-env", "PATH=/bin"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	if d.Annotations[annotationContainerdName] != "localhost/fnlet/x:latest" || d.Annotations[annotationRefName] != "latest" {
		t.Errorf("annotations %v", d.Annotations)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, files, _ := readTar(t, f)
	var man Manifest
	json.Unmarshal(files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")], &man)
	var raw map[string]json.RawMessage
	json.Unmarshal(files["blobs/sha256/"+strings.TrimPrefix(man.Config.Digest, "sha256:")], &raw)
	var cc map[string]any
	json.Unmarshal(raw["config"], &cc)
	if _, ok := cc["Entrypoint"]; ok {
		t.Errorf("Entrypoint set: %v", cc)
	}
	if !reflect.DeepEqual(cc["Env"], []any{"PATH=/bin"}) || !reflect.DeepEqual(cc["Cmd"], []any{"sh"}) {
		t.Errorf("config %v", cc)
	}
	if _, err := Build(&Options{Rootfs: filepath.Join(rootfs, "etc", "passwd"), Ref: "localhost/a:b", Out: out, Arch: "amd64", OS: "linux"}); err == nil {
		t.Error("a file as rootfs accepted")
	}
}
