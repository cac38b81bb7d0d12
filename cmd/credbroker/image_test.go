package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"io"
	"maps"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

// `make image` builds an OCI image from scratch: the static binary, run as
// a non-root user, with the /data volume, the broker's four ports, labels
// with its version and source, and nothing else (no shell). Where podman
// is installed (make deps), the image runs, and a service gets a token
// through it.
func TestImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the image")
	}
	dir := t.TempDir()
	make := exec.Command("make", "-s", "image", "BIN="+dir, "VERSION=v9.8.7-test", "COMMIT=0123abcd", "BUILD_DATE=2026-12-01T10:00:00Z")
	make.Dir = filepath.Join("..", "..")
	if out, err := make.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	archive := filepath.Join(dir, "credbroker-image.tar")
	img, ref := readImageArchive(t, archive)
	if ref != "credbroker:v9.8.7-test" {
		t.Fatalf("the image is named %q", ref)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Config
	ports := slices.Sorted(maps.Keys(c.ExposedPorts))
	if c.User != "65532:65532" || !slices.Equal(c.Entrypoint, []string{"/credbroker"}) || !slices.Equal(c.Cmd, []string{"serve"}) ||
		!slices.Equal(ports, []string{"50051/tcp", "50052/tcp", "50053/tcp", "50054/tcp"}) || len(c.Volumes) != 1 || c.Volumes["/data"] != struct{}{} ||
		!slices.Contains(c.Env, "CREDBROKER_DATA_DIR=/data") || cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Fatalf("the image's config: %+v", cfg)
	}
	for label, want := range map[string]string{
		"org.opencontainers.image.version":  "v9.8.7-test",
		"org.opencontainers.image.revision": "0123abcd",
		"org.opencontainers.image.created":  "2026-12-01T10:00:00Z",
		"org.opencontainers.image.source":   "https://github.com/credbroker/credbroker",
		"org.opencontainers.image.licenses": "Apache-2.0",
	} {
		if c.Labels[label] != want {
			t.Errorf("label %s = %q, want %q", label, c.Labels[label], want)
		}
	}

	// Its files: these and nothing else (no shell, no package manager).
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers, %v; want 1", len(layers), err)
	}
	files := map[string]*tar.Header{}
	var binary []byte
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	for r := tar.NewReader(rc); ; {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = h
		if h.Name == "credbroker" {
			binary, _ = io.ReadAll(r)
		}
	}
	if names := slices.Sorted(maps.Keys(files)); !slices.Equal(names, []string{
		"credbroker", "data/", "etc/", "etc/group", "etc/passwd", "etc/ssl/", "etc/ssl/certs/", "etc/ssl/certs/ca-certificates.crt", "tmp/",
	}) {
		t.Fatalf("the image's files: %v", names)
	}
	if d := files["data/"]; d.Uid != 65532 || d.Mode != 0o700 {
		t.Fatalf("/data is owned by %d, mode %o; want 65532, 700", d.Uid, d.Mode)
	}
	if b := files["credbroker"]; b.Uid != 0 || b.Mode&0o222 != 0 {
		t.Fatalf("/credbroker is owned by %d, mode %o: its user could change it", b.Uid, b.Mode)
	}
	exe, err := elf.NewFile(bytes.NewReader(binary))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range exe.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the binary is dynamically linked: it cannot run from scratch")
		}
	}

	runImage(t, archive, ref)
}

// readImageArchive opens an OCI image layout in a tar archive, with one
// image, and returns it with its name.
func readImageArchive(t *testing.T, archive string) (v1.Image, string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	for r := tar.NewReader(f); ; {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(path, dir+string(filepath.Separator)) {
			t.Fatalf("the archive names a file outside it: %s", h.Name)
		}
		if h.Typeflag == tar.TypeDir {
			err = os.MkdirAll(path, 0o755)
		} else {
			err = os.MkdirAll(filepath.Dir(path), 0o755)
			if err == nil {
				body, _ := io.ReadAll(r)
				err = os.WriteFile(path, body, 0o644)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	index, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := index.IndexManifest()
	if err != nil || len(m.Manifests) != 1 {
		t.Fatalf("the archive's index: %+v, %v; want one image", m, err)
	}
	img, err := index.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img, m.Manifests[0].Annotations["org.opencontainers.image.ref.name"]
}

// runImage loads the image into a podman store of the test's own and
// runs it against a JumpCloud stand-in; a service gets a token through
// it. The container shares the host's network, so that it can serve on
// loopback without TLS, as the broker allows.
func runImage(t *testing.T, archive, ref string) {
	if _, err := exec.LookPath("podman"); err != nil {
		if os.Getenv("CREDBROKER_REQUIRE_ALL") != "" {
			t.Fatal("podman is missing: make deps installs it")
		}
		t.Skip("podman is not installed (make deps installs it): the image was checked, not run")
	}
	store := t.TempDir()
	podman := func(args ...string) *exec.Cmd {
		// runc, with limits no higher than they are: this keeps to what a
		// sandboxed machine (cgroup v1, no raising of limits) allows.
		return exec.Command("podman", append([]string{"--root", filepath.Join(store, "root"), "--runroot", filepath.Join(store, "run"),
			"--storage-driver", "vfs", "--events-backend", "file", "--runtime", "runc"}, args...)...)
	}
	if out, err := podman("load", "--input", archive).CombinedOutput(); err != nil {
		t.Fatalf("podman load: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = podman("rm", "--all", "--force").Run() })
	limits := []string{"--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"}
	// Whether this machine can run a container at all: the image's own
	// `credbroker version` must print its version; a container runtime
	// that cannot start one here (no cgroups or namespaces allowed, say) is
	// the machine's limit, not the image's.
	out, err := podman(append(append([]string{"run", "--rm"}, limits...), ref, "version")...).CombinedOutput()
	if err != nil && regexp.MustCompile(`OCI runtime|OCI permission denied|crun:|runc:|cgroup|namespace`).Match(out) {
		t.Skipf("the image was checked, but this machine cannot run containers: %s", bytes.TrimSpace(out))
	}
	if err != nil || !strings.HasPrefix(string(out), "credbroker v9.8.7-test\n") || !strings.Contains(string(out), "commit: 0123abcd") {
		t.Fatalf("credbroker version in the container: %v\n%s", err, out)
	}

	fake := jumpcloudfake.New("e2e-client", e2eClientSecret)
	jc := httptest.NewServer(fake)
	t.Cleanup(jc.Close)
	run := append(append([]string{"run", "--rm", "--network", "host"}, limits...), "--env", "CREDBROKER_MASTER_KEY", ref)
	cmd := podman(append(run, append(serveOnFreePorts, "--jumpcloud-token-url-us", jc.URL+jumpcloudfake.TokenPath)...)...)
	cmd.Env = append(os.Environ(), "CREDBROKER_MASTER_KEY="+e2eMasterKey)
	logs := &lockedWriter{w: &bytes.Buffer{}}
	r := startServe(t, cmd, logs)
	if r.bootstrapKey == "" || !strings.Contains(logs.String(), `"data_dir":"/data"`) {
		t.Fatalf("the container printed no admin key, or does not keep its data in /data:\n%s", logs.String())
	}

	admin := r.connect(t, keyCreds(r.bootstrapKey)...)
	ctx := context.Background()
	accounts := credbrokerv1.NewAccountServiceClient(admin)
	if _, err := accounts.CreateAccount(ctx, &credbrokerv1.CreateAccountRequest{
		AccountId: "acme",
		Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
			ClientId: "e2e-client", ClientSecret: e2eClientSecret, Region: credbrokerv1.Region_REGION_US,
		}},
	}); err != nil {
		t.Fatal(err)
	}
	checker := createCheckerKey(t, admin)
	if _, err := accounts.AddAccountGrant(ctx, &credbrokerv1.AddAccountGrantRequest{Name: "accounts/acme", Principal: "callerKeys/checker"}); err != nil {
		t.Fatal(err)
	}
	tok, err := credbrokerv1.NewTokenServiceClient(r.connect(t, keyCreds(checker)...)).GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	if err != nil || tok.GetAccessToken() != fake.LastToken() {
		t.Fatalf("GetToken through the container: %v", err)
	}
	r.stop(t)
}
