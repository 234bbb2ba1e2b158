// Command mkimage packs a root filesystem directory into a single-layer OCI
// image-layout tarball that `ctr images import` and `skopeo copy
// oci-archive:FILE ...` accept — no registry, no Docker, standard library only.
//
// Usage:
//
//	go run ./hack/tools/mkimage -rootfs DIR -ref localhost/fnlet/NAME:TAG -out FILE.tar \
//	    [-entrypoint ARG]... [-cmd ARG]... [-env K=V]... [-workdir DIR] [-user U] \
//	    [-label K=V]... [-arch amd64] [-os linux] [-mtime UNIX_SECONDS]
//
// -entrypoint and -cmd are repeatable (one argument each), or take a JSON
// array: -entrypoint '["/bin/sh","-c"]'; '[]' sets an explicit empty list.
// -env is repeatable; PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
// comes first unless an -env PATH=... is given.
//
// The tarball holds oci-layout, index.json and blobs/sha256/{layer, config,
// manifest}. The index's manifest descriptor carries the platform and the
// annotations io.containerd.image.name=<ref> (the name ctr import gives the
// image) and org.opencontainers.image.ref.name=<tag>.
//
// The layer keeps the tree's file types (regular, directory, symlink, hard
// link, device, fifo) and permission bits including setuid/setgid/sticky;
// every entry is owned by 0:0 with no user/group names and the fixed -mtime
// (default 0, the epoch; SOURCE_DATE_EPOCH if set). Entries are in lexical
// walk order and gzip carries no name or time, so the same tree and flags give
// byte-identical output (with the same Go version's compress/flate).
//
// On success it prints the manifest digest (sha256:...) on stdout.
package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Media types and annotation keys (OCI image spec v1.1).
const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"

	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"

	defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Options describe one image.
type Options struct {
	Rootfs     string
	Ref        string
	Out        string
	Entrypoint []string // nil: not set
	Cmd        []string // nil: not set
	Env        []string
	WorkingDir string
	User       string
	Labels     map[string]string
	Arch, OS   string
	Mtime      time.Time
}

// Descriptor is an OCI content descriptor.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *Platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Platform is the platform of a manifest descriptor.
type Platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// Index is an OCI image index (index.json).
type Index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []Descriptor `json:"manifests"`
}

// Manifest is an OCI image manifest.
type Manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

// ImageConfig is an OCI image configuration.
type ImageConfig struct {
	Created      string          `json:"created"`
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Config       ContainerConfig `json:"config"`
	RootFS       RootFS          `json:"rootfs"`
	History      []History       `json:"history"`
}

// ContainerConfig is the execution part of ImageConfig.
type ContainerConfig struct {
	User       string            `json:"User,omitempty"`
	Env        []string          `json:"Env,omitempty"`
	Entrypoint []string          `json:"Entrypoint,omitempty"`
	Cmd        []string          `json:"Cmd,omitempty"`
	WorkingDir string            `json:"WorkingDir,omitempty"`
	Labels     map[string]string `json:"Labels,omitempty"`
}

// RootFS lists the layers' uncompressed digests.
type RootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

// History is one image history entry.
type History struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

// listFlag is a repeatable string flag that also accepts a JSON array.
type listFlag struct {
	vals []string
	set  bool
}

func (l *listFlag) String() string { return strings.Join(l.vals, " ") }
func (l *listFlag) Set(v string) error {
	l.set = true
	if strings.HasPrefix(strings.TrimSpace(v), "[") {
		var a []string
		if err := json.Unmarshal([]byte(v), &a); err != nil {
			return fmt.Errorf("not a JSON array of strings: %w", err)
		}
		l.vals = append(l.vals, a...)
		return nil
	}
	l.vals = append(l.vals, v)
	return nil
}

// get returns nil if the flag was never given, else a non-nil list.
func (l *listFlag) get() []string {
	if !l.set {
		return nil
	}
	return append([]string{}, l.vals...)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(2)
	}
	d, err := Build(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	fmt.Println(d.Digest)
}

func parseFlags(args []string, errOut io.Writer) (*Options, error) {
	var (
		o               Options
		entrypoint, cmd listFlag
		env, labels     multiFlag
		mtime           int64
		fs              = flag.NewFlagSet("mkimage", flag.ContinueOnError)
	)
	defaultMtime, err := sourceDateEpoch()
	if err != nil {
		return nil, err
	}
	fs.StringVar(&o.Rootfs, "rootfs", "", "root filesystem `DIR` (required)")
	fs.StringVar(&o.Ref, "ref", "", "image `REF`, e.g. localhost/fnlet/busybox:v1 (required)")
	fs.StringVar(&o.Out, "out", "", "output tarball `FILE` (required)")
	fs.Var(&entrypoint, "entrypoint", "entrypoint `ARG` (repeatable) or JSON array")
	fs.Var(&cmd, "cmd", "cmd `ARG` (repeatable) or JSON array")
	fs.Var(&env, "env", "environment `K=V` (repeatable)")
	fs.Var(&labels, "label", "config label `K=V` (repeatable)")
	fs.StringVar(&o.WorkingDir, "workdir", "", "working `DIR`")
	fs.StringVar(&o.User, "user", "", "`USER[:GROUP]` to run as")
	fs.StringVar(&o.Arch, "arch", runtime.GOARCH, "image architecture")
	fs.StringVar(&o.OS, "os", "linux", "image OS")
	fs.Int64Var(&mtime, "mtime", defaultMtime, "modification time of all entries, Unix `SECONDS` (default $SOURCE_DATE_EPOCH or 0)")
	fs.SetOutput(errOut)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.Rootfs == "" || o.Ref == "" || o.Out == "" {
		return nil, errors.New("-rootfs, -ref and -out are required")
	}
	o.Entrypoint, o.Cmd = entrypoint.get(), cmd.get()
	o.Env = env
	for _, kv := range labels {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("-label %q: want KEY=VALUE", kv)
		}
		if o.Labels == nil {
			o.Labels = map[string]string{}
		}
		o.Labels[k] = v
	}
	o.Mtime = time.Unix(mtime, 0).UTC()
	return &o, nil
}

func sourceDateEpoch() (int64, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", v, err)
	}
	return n, nil
}

// refTag returns the tag of ref ("latest" if none) and the full reference
// with that tag.
func refTag(ref string) (tag, full string, err error) {
	if ref == "" || strings.ContainsAny(ref, "@ \t\n") {
		return "", "", fmt.Errorf("invalid image reference %q (want NAME[:TAG], no digest)", ref)
	}
	slash := strings.LastIndex(ref, "/")
	if colon := strings.LastIndex(ref, ":"); colon > slash {
		tag = ref[colon+1:]
		if tag == "" || ref[:colon] == "" {
			return "", "", fmt.Errorf("invalid image reference %q", ref)
		}
		return tag, ref, nil
	}
	return "latest", ref + ":latest", nil
}

// Build writes the image tarball and returns the manifest descriptor.
func Build(o *Options) (Descriptor, error) {
	tag, fullRef, err := refTag(o.Ref)
	if err != nil {
		return Descriptor{}, err
	}
	st, err := os.Stat(o.Rootfs)
	if err != nil {
		return Descriptor{}, err
	}
	if !st.IsDir() {
		return Descriptor{}, fmt.Errorf("-rootfs %s is not a directory", o.Rootfs)
	}
	if o.Arch == "" || o.OS == "" {
		return Descriptor{}, errors.New("architecture and OS must not be empty")
	}

	outDir := filepath.Dir(o.Out)
	layerFile, err := os.CreateTemp(outDir, ".mkimage-layer-*")
	if err != nil {
		return Descriptor{}, err
	}
	defer os.Remove(layerFile.Name())
	defer layerFile.Close()

	diffID, layer, err := writeLayer(layerFile, o.Rootfs, o.Mtime)
	if err != nil {
		return Descriptor{}, fmt.Errorf("layer: %w", err)
	}

	env := append([]string{}, o.Env...)
	hasPath := false
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			hasPath = true
		}
	}
	if !hasPath {
		env = append([]string{defaultPath}, env...)
	}
	created := o.Mtime.UTC().Format(time.RFC3339)
	cfg := ImageConfig{
		Created:      created,
		Architecture: o.Arch,
		OS:           o.OS,
		Config: ContainerConfig{
			User:       o.User,
			Env:        env,
			Entrypoint: o.Entrypoint,
			Cmd:        o.Cmd,
			WorkingDir: o.WorkingDir,
			Labels:     o.Labels,
		},
		RootFS:  RootFS{Type: "layers", DiffIDs: []string{diffID}},
		History: []History{{Created: created, CreatedBy: "fnlet hack/tools/mkimage"}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return Descriptor{}, err
	}
	cfgDesc := describe(mediaTypeConfig, cfgJSON)
	man := Manifest{SchemaVersion: 2, MediaType: mediaTypeManifest, Config: cfgDesc, Layers: []Descriptor{layer}}
	manJSON, err := json.Marshal(man)
	if err != nil {
		return Descriptor{}, err
	}
	manDesc := describe(mediaTypeManifest, manJSON)
	manDesc.Platform = &Platform{Architecture: o.Arch, OS: o.OS}
	manDesc.Annotations = map[string]string{annotationContainerdName: fullRef, annotationRefName: tag}
	idxJSON, err := json.Marshal(Index{SchemaVersion: 2, MediaType: mediaTypeIndex, Manifests: []Descriptor{manDesc}})
	if err != nil {
		return Descriptor{}, err
	}

	tmp, err := os.CreateTemp(outDir, ".mkimage-out-*")
	if err != nil {
		return Descriptor{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	tw := tar.NewWriter(tmp)
	addDir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: o.Mtime, Format: tar.FormatUSTAR})
	}
	addBytes := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: o.Mtime, Format: tar.FormatUSTAR}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	blob := func(d Descriptor) string { return "blobs/sha256/" + strings.TrimPrefix(d.Digest, "sha256:") }
	if err := errors.Join(
		addBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)),
		addBytes("index.json", idxJSON),
		addDir("blobs/"),
		addDir("blobs/sha256/"),
		addBytes(blob(manDesc), manJSON),
		addBytes(blob(cfgDesc), cfgJSON),
	); err != nil {
		return Descriptor{}, err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: blob(layer), Mode: 0o644, Size: layer.Size, ModTime: o.Mtime, Format: tar.FormatUSTAR}); err != nil {
		return Descriptor{}, err
	}
	if _, err := layerFile.Seek(0, io.SeekStart); err != nil {
		return Descriptor{}, err
	}
	if n, err := io.Copy(tw, layerFile); err != nil || n != layer.Size {
		return Descriptor{}, fmt.Errorf("copy layer: %d of %d bytes: %v", n, layer.Size, err)
	}
	if err := tw.Close(); err != nil {
		return Descriptor{}, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return Descriptor{}, err
	}
	if err := tmp.Close(); err != nil {
		return Descriptor{}, err
	}
	if err := os.Rename(tmp.Name(), o.Out); err != nil {
		return Descriptor{}, err
	}
	return manDesc, nil
}

func describe(mediaType string, b []byte) Descriptor {
	sum := sha256.Sum256(b)
	return Descriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(b))}
}

// countingHash hashes and counts what is written to it.
type countingHash struct {
	h hash.Hash
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

func (c *countingHash) digest() string { return "sha256:" + hex.EncodeToString(c.h.Sum(nil)) }

// writeLayer writes the gzipped tar of rootfs to w and returns the diff ID
// (digest of the uncompressed tar) and the layer descriptor.
func writeLayer(w io.Writer, rootfs string, mtime time.Time) (string, Descriptor, error) {
	compressed := &countingHash{h: sha256.New()}
	gz, err := gzip.NewWriterLevel(io.MultiWriter(w, compressed), gzip.BestCompression)
	if err != nil {
		return "", Descriptor{}, err
	}
	uncompressed := &countingHash{h: sha256.New()}
	tw := tar.NewWriter(io.MultiWriter(gz, uncompressed))
	if err := addTree(tw, rootfs, mtime); err != nil {
		return "", Descriptor{}, err
	}
	if err := tw.Close(); err != nil {
		return "", Descriptor{}, err
	}
	if err := gz.Close(); err != nil {
		return "", Descriptor{}, err
	}
	return uncompressed.digest(), Descriptor{MediaType: mediaTypeLayer, Digest: compressed.digest(), Size: compressed.n}, nil
}

type inode struct{ dev, ino uint64 }

// addTree writes every entry under root (not root itself) to tw.
func addTree(tw *tar.Writer, root string, mtime time.Time) error {
	links := map[inode]string{}
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		name := filepath.ToSlash(rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		var target string
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		hdr.Name = name
		if fi.IsDir() {
			hdr.Name += "/"
		}
		// Ownership and times are normalised; permission bits are kept.
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = mtime, time.Time{}, time.Time{}
		hdr.Mode = int64(fi.Mode().Perm())
		if fi.Mode()&fs.ModeSetuid != 0 {
			hdr.Mode |= 0o4000
		}
		if fi.Mode()&fs.ModeSetgid != 0 {
			hdr.Mode |= 0o2000
		}
		if fi.Mode()&fs.ModeSticky != 0 {
			hdr.Mode |= 0o1000
		}
		hdr.PAXRecords = nil
		hdr.Format = tar.FormatUnknown
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
			key := inode{uint64(st.Dev), uint64(st.Ino)}
			if first, seen := links[key]; seen {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				links[key] = name
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if hdr.Typeflag != tar.TypeReg || hdr.Size == 0 {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if n, err := io.Copy(tw, f); err != nil || n != hdr.Size {
			return fmt.Errorf("%s: copied %d of %d bytes (file changed while packing?): %v", path, n, hdr.Size, err)
		}
		return nil
	})
}
