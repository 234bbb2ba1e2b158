package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The suite acts like a user: every change goes through kubectl. Helpers
// here run kubectl with the suite's KUBECONFIG, and commands on the node
// (ctr, cat) directly or through FNLET_E2E_NODE_EXEC.

func kubectlBin() string { return envOr("KUBECTL", "kubectl") }

// kubectlCmd runs kubectl with stdin; it returns stdout and stderr apart,
// so warnings on stderr never end up in parsed output.
func kubectlCmd(stdin string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(kubectlBin(), append([]string{"--kubeconfig", env.kubeconfig}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// kubectlRaw is kubectlCmd with stdout and stderr together (for messages).
func kubectlRaw(stdin string, args ...string) (string, error) {
	o, e, err := kubectlCmd(stdin, args...)
	return o + e, err
}

// kubectl runs kubectl in the suite's namespace and returns its stdout;
// the test fails if kubectl does.
func kubectl(t testing.TB, args ...string) string {
	t.Helper()
	o, e, err := kubectlCmd("", append([]string{"-n", env.ns}, args...)...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, o, e)
	}
	return o
}

// apply is `kubectl apply -f -` of YAML in the suite's namespace.
func apply(t testing.TB, yaml string) {
	t.Helper()
	if out, err := kubectlRaw(yaml, "-n", env.ns, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s\n--- input:\n%s", err, out, yaml)
	}
}

// jsonpath reads fields of a FunctionCall with kubectl get -o jsonpath,
// e.g. tmpl "{.status.phase}/{.status.reason}".
func jsonpath(t testing.TB, name, tmpl string) string {
	t.Helper()
	return kubectl(t, "get", "fc", name, "-o", "jsonpath="+tmpl)
}

// fcYAML is a FunctionCall manifest running the test image with args;
// extra are more lines of the spec, e.g. "timeout: 2s".
func fcYAML(name string, args []string, extra ...string) string {
	a, _ := json.Marshal(args) // a JSON array is a YAML flow sequence
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: fnlet.dev/v1alpha1\nkind: FunctionCall\nmetadata:\n  name: %s\nspec:\n", name)
	fmt.Fprintf(&b, "  image: %s\n  imagePullPolicy: Never\n  args: %s\n", testImage, a)
	for _, l := range extra {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	return b.String()
}

// onNode runs argv on a node: directly when FNLET_E2E_NODE_EXEC is unset
// (the node is this machine), else after that prefix with {node} replaced.
func onNode(t testing.TB, node string, argv ...string) (string, error) {
	t.Helper()
	if env.nodeExec == "" {
		// The node must be this machine: its containerd socket is here.
		if _, err := os.Stat(env.ctrdSock); err != nil {
			t.Fatalf("node %s: containerd socket %s not on this machine (%v): set FNLET_E2E_NODE_EXEC "+
				"(e.g. \"docker exec {node}\") and FNLET_E2E_CONTAINERD_SOCK", node, env.ctrdSock, err)
		}
	} else {
		argv = append(strings.Fields(strings.ReplaceAll(env.nodeExec, "{node}", node)), argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		return o.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(e.String()))
	}
	return o.String(), nil
}

// nodeContainers lists the container IDs of fnlet's containerd namespace on
// a node: `ctr -n fnlet containers ls -q` on the cluster's socket.
func nodeContainers(t testing.TB, node string) []string {
	t.Helper()
	out, err := onNode(t, node, append(strings.Fields(env.ctr), "--address", env.ctrdSock, "-n", env.ctrdNS, "containers", "ls", "-q")...)
	if err != nil {
		t.Fatalf("list containers on %s: %v", node, err)
	}
	return strings.Fields(out)
}

func hasContainer(t testing.TB, node, id string) bool {
	t.Helper()
	for _, c := range nodeContainers(t, node) {
		if c == id {
			return true
		}
	}
	return false
}

// nodeFile reads a file on a node.
func nodeFile(t testing.TB, node, path string) (string, error) {
	t.Helper()
	return onNode(t, node, "cat", path)
}
