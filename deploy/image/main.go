// Command image builds credbroker's OCI image without a registry or a
// container engine: one layer on nothing (FROM scratch) holding the
// static binary, the build machine's CA certificates, an /etc/passwd
// naming the non-root user it runs as, and the /data volume it owns.
// There is no shell, no package manager and nothing else to patch.
//
//	go run ./deploy/image --binary bin/credbroker --out bin/credbroker-image.tar
//
// writes an OCI image layout as a tar archive ("oci-archive"), which
// `podman load`, `docker load` (Docker 25 and later) and `skopeo copy
// oci-archive:...` take. `make image` runs it on `make build`'s binary.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image's user: not root, and no user of the host (distroless's
// "nonroot" number, so that volume permissions carry over).
const (
	uid  = 65532
	user = "nonroot"
)

// Ports are the broker's listeners: gRPC, the egress proxy, metrics and
// health, the Hub.
var Ports = []string{"50051/tcp", "50052/tcp", "50053/tcp", "50054/tcp"}

// Options say what goes into the image.
type Options struct {
	Binary   string // a static linux binary of credbroker
	CACerts  string // PEM bundle installed as /etc/ssl/certs/ca-certificates.crt
	Arch     string
	Version  string
	Revision string
	Created  time.Time
}

func main() {
	o := Options{}
	var out, created string
	flag.StringVar(&o.Binary, "binary", "bin/credbroker", "the static credbroker binary (make build)")
	flag.StringVar(&out, "out", "bin/credbroker-image.tar", "where to write the image (an OCI layout in a tar archive)")
	flag.StringVar(&o.CACerts, "ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "CA certificates for the image (Debian's ca-certificates package)")
	flag.StringVar(&o.Arch, "arch", "amd64", "the binary's architecture (GOARCH)")
	flag.StringVar(&o.Version, "version", "", `the version it is labelled and tagged with (default "dev")`)
	flag.StringVar(&o.Revision, "revision", "unknown", "the git commit it is built from")
	flag.StringVar(&created, "created", "", "its creation time, RFC 3339 (default: now)")
	flag.Parse()
	o.Created = time.Now().UTC().Truncate(time.Second)
	if created != "" {
		t, err := time.Parse(time.RFC3339, created)
		if err != nil {
			fail(fmt.Errorf("--created: %w", err))
		}
		o.Created = t
	}
	img, err := Build(o)
	if err != nil {
		fail(err)
	}
	if err := WriteArchive(out, img, "credbroker:"+tag(o.Version)); err != nil {
		fail(err)
	}
	digest, _ := img.Digest()
	fmt.Printf("wrote %s: credbroker:%s, %s\n", out, tag(o.Version), digest)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "image:", err)
	os.Exit(1)
}

func tag(version string) string {
	if version == "" {
		return "dev"
	}
	return strings.ReplaceAll(version, "+", "_") // a tag allows [A-Za-z0-9_.-]
}

// Build returns the image.
func Build(o Options) (v1.Image, error) {
	binary, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("the binary: %w (make build)", err)
	}
	if !bytes.HasPrefix(binary, []byte("\x7fELF")) {
		return nil, fmt.Errorf("%s is not a Linux binary", o.Binary)
	}
	certs, err := os.ReadFile(o.CACerts)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no CA certificates at %s: install Debian's ca-certificates package, or give --ca-certificates", o.CACerts)
	} else if err != nil {
		return nil, err
	}
	files, err := rootFS(o.Created, binary, certs)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(files)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: o.Created}, CreatedBy: "deploy/image: credbroker, CA certificates, /etc/passwd, /data",
	}}); err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", o.Arch
	cfg.Created = v1.Time{Time: o.Created}
	version := o.Version
	if version == "" {
		version = "dev"
	}
	cfg.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", uid, uid),
		Entrypoint: []string{"/credbroker"},
		Cmd:        []string{"serve"},
		WorkingDir: "/data",
		Env: []string{
			"CREDBROKER_DATA_DIR=/data",
			"PATH=/", // nothing to find but the binary
		},
		ExposedPorts: map[string]struct{}{},
		Volumes:      map[string]struct{}{"/data": {}},
		Labels: map[string]string{
			"org.opencontainers.image.title":       "credbroker",
			"org.opencontainers.image.description": "Keeps third-party API credentials and hands out short-lived tokens",
			"org.opencontainers.image.version":     version,
			"org.opencontainers.image.revision":    o.Revision,
			"org.opencontainers.image.created":     o.Created.Format(time.RFC3339),
			"org.opencontainers.image.source":      "https://github.com/credbroker/credbroker",
			"org.opencontainers.image.licenses":    "Apache-2.0",
		},
		StopSignal: "SIGTERM",
	}
	for _, p := range Ports {
		cfg.Config.ExposedPorts[p] = struct{}{}
	}
	return mutate.ConfigFile(img, cfg)
}

// rootFS is the image's one layer: every file with fixed owners, modes
// and times, so that the same inputs make the same image.
func rootFS(at time.Time, binary, certs []byte) ([]byte, error) {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	dir := func(name string, mode int64, owner int) error {
		return w.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: owner, Gid: owner, ModTime: at})
	}
	file := func(name string, mode int64, body []byte) error {
		if err := w.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body)), ModTime: at}); err != nil {
			return err
		}
		_, err := w.Write(body)
		return err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\n%s:x:%d:%d:%s:/data:/sbin/nologin\n", user, uid, uid, user)
	group := fmt.Sprintf("root:x:0:\n%s:x:%d:\n", user, uid)
	for _, err := range []error{
		file("credbroker", 0o555, binary),
		dir("etc", 0o755, 0),
		file("etc/passwd", 0o444, []byte(passwd)),
		file("etc/group", 0o444, []byte(group)),
		dir("etc/ssl", 0o755, 0),
		dir("etc/ssl/certs", 0o755, 0),
		file("etc/ssl/certs/ca-certificates.crt", 0o444, certs),
		dir("data", 0o700, uid),
		dir("tmp", 0o1777, 0),
		w.Close(),
	} {
		if err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// WriteArchive writes img, named ref, to path as an OCI image layout in a
// tar archive.
func WriteArchive(path string, img v1.Image, ref string) error {
	dir, err := os.MkdirTemp("", "credbroker-image")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref})); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".credbroker-image-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	w := tar.NewWriter(f)
	err = w.AddFS(os.DirFS(dir))
	if err := errors.Join(err, w.Close(), f.Chmod(0o644), f.Close()); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
