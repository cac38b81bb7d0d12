package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// manifests are the objects of one file under deploy/kubernetes, decoded
// strictly into k8s.io/api's types.
type manifests struct {
	services     []*corev1.Service
	statefulSets []*appsv1.StatefulSet
	deployments  []*appsv1.Deployment
	budgets      []*policyv1.PodDisruptionBudget
	policies     []*networkingv1.NetworkPolicy
	accounts     []*corev1.ServiceAccount
}

// readManifests decodes every document of file into its typed object,
// refusing unknown fields, unknown kinds and wrong API versions (no
// schema can be downloaded here: these types are the schema).
func readManifests(t *testing.T, file string) manifests {
	t.Helper()
	var m manifests
	for i, doc := range strings.Split(readFile(t, file), "\n---\n") {
		js, err := yaml.YAMLToJSONStrict([]byte(doc)) // duplicate keys are errors too
		if err != nil {
			t.Fatalf("%s, document %d: %v", file, i+1, err)
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(js, &tm); err != nil {
			t.Fatal(err)
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 Service":
			obj = add(&m.services)
		case "v1 ServiceAccount":
			obj = add(&m.accounts)
		case "apps/v1 StatefulSet":
			obj = add(&m.statefulSets)
		case "apps/v1 Deployment":
			obj = add(&m.deployments)
		case "policy/v1 PodDisruptionBudget":
			obj = add(&m.budgets)
		case "networking.k8s.io/v1 NetworkPolicy":
			obj = add(&m.policies)
		default:
			t.Fatalf("%s, document %d: unexpected %s %s", file, i+1, tm.APIVersion, tm.Kind)
		}
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		if err := dec.Decode(obj); err != nil {
			t.Fatalf("%s, document %d (%s): %v", file, i+1, tm.Kind, err)
		}
	}
	return m
}

// add appends a new object to list and returns it.
func add[T any](list *[]*T) *T {
	v := new(T)
	*list = append(*list, v)
	return v
}

// The Kubernetes manifests decode strictly into k8s.io/api's types and
// hold to the rules below; the broker's pod starts as configured (its
// Secrets as files), over TLS, with the operator's admin key.
func TestKubernetesManifests(t *testing.T) {
	e := newE2ESetup(t)
	help, _ := exec.Command(e.bin, "serve", "--help").CombinedOutput()
	single := readManifests(t, "../../deploy/kubernetes/single.yaml")
	cluster := readManifests(t, "../../deploy/kubernetes/cluster.yaml")
	etcd := readManifests(t, "../../deploy/kubernetes/etcd.yaml")

	if len(single.statefulSets) != 1 || *single.statefulSets[0].Spec.Replicas != 1 || len(single.statefulSets[0].Spec.VolumeClaimTemplates) != 1 {
		t.Fatal("single.yaml: want one StatefulSet of one replica with a volume claim")
	}
	if len(cluster.deployments) != 1 || *cluster.deployments[0].Spec.Replicas != 3 {
		t.Fatal("cluster.yaml: want one Deployment of three replicas")
	}
	if len(etcd.statefulSets) != 1 || *etcd.statefulSets[0].Spec.Replicas != 3 {
		t.Fatal("etcd.yaml: want one StatefulSet of three members")
	}
	for name, m := range map[string]manifests{"single.yaml": single, "cluster.yaml": cluster, "etcd.yaml": etcd} {
		t.Run(name, func(t *testing.T) {
			var pods []workload
			for _, s := range m.statefulSets {
				pods = append(pods, workload{s.Name, s.Spec.Selector, s.Spec.Template, *s.Spec.Replicas, claims(s.Spec.VolumeClaimTemplates)})
				if !slices.ContainsFunc(m.services, func(svc *corev1.Service) bool { return svc.Name == s.Spec.ServiceName && svc.Spec.ClusterIP == "None" }) {
					t.Errorf("%s: its serviceName %q is no headless Service", s.Name, s.Spec.ServiceName)
				}
			}
			for _, d := range m.deployments {
				pods = append(pods, workload{d.Name, d.Spec.Selector, d.Spec.Template, *d.Spec.Replicas, nil})
			}
			for _, w := range pods {
				checkPod(t, w, string(help))
				if !slices.ContainsFunc(m.policies, func(p *networkingv1.NetworkPolicy) bool { return selects(t, &p.Spec.PodSelector, w) }) {
					t.Errorf("%s: no NetworkPolicy selects its pods", w.name)
				}
				if !slices.ContainsFunc(m.services, func(s *corev1.Service) bool {
					return labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(w.template.Labels))
				}) {
					t.Errorf("%s: no Service selects its pods", w.name)
				}
				if w.replicas > 1 && !slices.ContainsFunc(m.services, func(s *corev1.Service) bool {
					return s.Spec.ClusterIP == "None" && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(w.template.Labels))
				}) {
					t.Errorf("%s: no headless Service gives clients every replica's address", w.name)
				}
				if w.replicas > 1 && !slices.ContainsFunc(m.budgets, func(b *policyv1.PodDisruptionBudget) bool {
					return selects(t, b.Spec.Selector, w) && b.Spec.MinAvailable != nil && b.Spec.MinAvailable.IntValue() == int(w.replicas)/2+1
				}) {
					t.Errorf("%s: no PodDisruptionBudget keeps a majority of its %d replicas", w.name, w.replicas)
				}
			}
		})
	}

	runManifestPod(t, e, single.statefulSets[0].Spec.Template.Spec)

	// The cluster's broker: its variables make a configuration serve takes.
	c := cluster.deployments[0].Spec.Template.Spec.Containers[0]
	cmd := exec.Command(e.bin, append(c.Args, "--print-config")...)
	cmd.Env = podEnv(c, nil)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), `storage: "etcd"`) || !strings.Contains(string(out), `etcd-endpoints: "https://etcd-0.etcd:2379,`) {
		t.Fatalf("serve --print-config as the cluster's pod is configured: %v\n%s", err, out)
	}
}

// workload is a StatefulSet's or a Deployment's pods.
type workload struct {
	name     string
	selector *metav1.LabelSelector
	template corev1.PodTemplateSpec
	replicas int32
	claims   []string // volume claim templates' names
}

func claims(pvcs []corev1.PersistentVolumeClaim) []string {
	var names []string
	for _, c := range pvcs {
		names = append(names, c.Name)
	}
	return names
}

func selects(t *testing.T, s *metav1.LabelSelector, w workload) bool {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		t.Fatal(err)
	}
	return sel.Matches(labels.Set(w.template.Labels))
}

// checkPod holds a pod template to the rules: its selector matches it; no
// service account token; non-root under the runtime's seccomp profile;
// each container with a read-only root, no privilege escalation, no
// capabilities, resource requests, a memory limit, liveness and readiness
// probes, a pinned image, only volumes that exist. The broker's container
// also: probes on /healthz and /readyz, only CREDBROKER_* variables that
// are serve's, and its keys from Secrets, never inline.
func checkPod(t *testing.T, w workload, serveHelp string) {
	t.Helper()
	p := w.template.Spec
	fail := func(format string, args ...any) { t.Errorf("%s: %s", w.name, fmt.Sprintf(format, args...)) }
	if !selects(t, w.selector, w) {
		fail("the selector does not match the pods' labels")
	}
	if p.AutomountServiceAccountToken == nil || *p.AutomountServiceAccountToken {
		fail("mounts a service account token")
	}
	if sc := p.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		fail("the pod is not non-root under RuntimeDefault seccomp: %+v", sc)
	}
	volumes := slices.Clone(w.claims)
	for _, v := range p.Volumes {
		volumes = append(volumes, v.Name)
	}
	for _, c := range append(p.InitContainers, p.Containers...) {
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || (sc.Privileged != nil && *sc.Privileged) ||
			sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			fail("container %s: its securityContext is not read-only root, non-root, no escalation, all capabilities dropped: %+v", c.Name, sc)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			fail("container %s: no CPU and memory requests, or no memory limit", c.Name)
		}
		if c.LivenessProbe == nil || c.ReadinessProbe == nil {
			fail("container %s: no liveness or readiness probe", c.Name)
		}
		if tag := c.Image[strings.LastIndex(c.Image, ":")+1:]; !strings.Contains(c.Image, ":") || tag == "latest" {
			fail("container %s: image %s has no pinned tag", c.Name, c.Image)
		}
		for _, m := range c.VolumeMounts {
			if !slices.Contains(volumes, m.Name) {
				fail("container %s mounts %s, which is no volume", c.Name, m.Name)
			}
		}
		if c.Name != "credbroker" {
			continue
		}
		if c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
			fail("the broker's probes are not /healthz and /readyz")
		}
		for _, env := range c.Env {
			if !strings.Contains(serveHelp, "(env "+env.Name+")") {
				fail("%s is no variable of credbroker serve", env.Name)
			}
			if strings.Contains(env.Name, "KEY") && !strings.HasSuffix(env.Name, "_FILE") && env.Name != "CREDBROKER_TLS_KEY" && env.Name != "CREDBROKER_ETCD_KEY" {
				fail("%s is given inline: keys come from Secrets, as files", env.Name)
			}
		}
		keyFile := envValue(c.Env, "CREDBROKER_MASTER_KEY_FILE")
		if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
			return strings.HasPrefix(keyFile, m.MountPath+"/") && slices.ContainsFunc(p.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name && v.Secret != nil })
		}) {
			fail("the master key (%q) is not a file from a Secret", keyFile)
		}
	}
}

func envValue(env []corev1.EnvVar, name string) string {
	for _, e := range env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// runManifestPod starts the broker as the pod spec p configures it: its
// variables, each volume a directory of the test's (a Secret's files as
// kubectl create secret makes them; TLS from dev-certs), on free loopback
// ports. Run as root, the test does what the kubelet does: the volumes
// belong to root and the pod's fsGroup (group-writable, setgid; a
// Secret's files readable by the group too), and the broker runs as the
// pod's user and group.
func runManifestPod(t *testing.T, e *e2eSetup, p corev1.PodSpec) {
	t.Helper()
	dir, err := os.MkdirTemp("", "credbroker-pod")
	if err == nil {
		err = os.Chmod(dir, 0o755) // the pod's user walks into it
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	certs := filepath.Join(dir, "certs")
	if out, err := exec.Command(e.bin, "dev-certs", "--dir", certs).CombinedOutput(); err != nil {
		t.Fatalf("dev-certs: %v\n%s", err, out)
	}
	adminKey := "cbk_kubernetes" + strings.Repeat("0", 33)
	secrets := map[string]map[string]string{ // as kubectl create secret makes them
		"credbroker-master-key":      {"master.key": e2eMasterKey},
		"credbroker-bootstrap-admin": {"bootstrap-admin.key": adminKey},
		"credbroker-tls":             {"tls.crt": readFile(t, filepath.Join(certs, "server.pem")), "tls.key": readFile(t, filepath.Join(certs, "server-key.pem"))},
	}
	sc := p.SecurityContext
	asPod := os.Geteuid() == 0 && sc.RunAsUser != nil && sc.FSGroup != nil
	own := func(path string, mode os.FileMode) {
		if !asPod {
			return
		}
		if err := errors.Join(os.Chown(path, 0, int(*sc.FSGroup)), os.Chmod(path, mode)); err != nil {
			t.Fatal(err)
		}
	}
	bin := e.bin
	if asPod {
		bin = filepath.Join(dir, "credbroker")
		if out, err := exec.Command("cp", e.bin, bin).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	c := p.Containers[0]
	paths := map[string]string{}
	for _, m := range c.VolumeMounts {
		local := filepath.Join(dir, "mounts", m.Name)
		paths[m.MountPath] = local
		if err := os.MkdirAll(local, 0o755); err != nil {
			t.Fatal(err)
		}
		own(local, os.ModeSetgid|0o775)
		for _, v := range p.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			files, ok := secrets[v.Secret.SecretName]
			if !ok {
				t.Fatalf("the pod mounts Secret %s, which the README does not say to create", v.Secret.SecretName)
			}
			for name, body := range files {
				if err := os.WriteFile(filepath.Join(local, name), []byte(body), 0o400); err != nil {
					t.Fatal(err)
				}
				own(filepath.Join(local, name), 0o440)
			}
		}
	}
	cmd := exec.Command(bin, append(c.Args, serveOnFreePorts[1:]...)...)
	cmd.Env = podEnv(c, paths)
	if asPod {
		gid := uint32(*sc.FSGroup)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(*sc.RunAsUser), Gid: uint32(*sc.RunAsGroup), Groups: []uint32{gid}}}
	}
	var logs bytes.Buffer
	r := startServe(t, cmd, &logs)
	stopAfterOperatorsKey(t, r, filepath.Join(certs, "ca.pem"), adminKey)
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) {
			t.Errorf("the pod's broker warned of its setup: %s", line)
		}
	}
}

// podEnv is the environment of container c, with paths under its mounts
// moved to local directories (by mount path).
func podEnv(c corev1.Container, local map[string]string) []string {
	mounted := regexp.MustCompile(`^/[^ ]*`)
	env := os.Environ()
	for _, v := range c.Env {
		value := mounted.ReplaceAllStringFunc(v.Value, func(path string) string {
			for mount, dir := range local {
				if rest, ok := strings.CutPrefix(path, mount); ok && (rest == "" || rest[0] == '/') {
					return dir + rest
				}
			}
			return path
		})
		env = append(env, v.Name+"="+value)
	}
	return env
}
