// Package kubeapi starts the real kube-apiserver + etcd (envtest, binaries
// from KUBEBUILDER_ASSETS) that the integration and chaos suites run the
// manager against, with fnlet's CRD installed and a manager identity bound
// to the ClusterRole controller-gen generated: the suites prove that role
// is enough.
package kubeapi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv"
)

// ManagerUser is the identity the manager runs as.
const ManagerUser = "fnlet-manager"

// Server is a running control plane.
type Server struct {
	Env    *envtest.Environment
	Config *rest.Config
	// Client is an admin client with fnlet's types.
	Client client.WithWatch
	// ManagerKubeconfig is a kubeconfig for ManagerUser, who holds only the
	// generated ClusterRole.
	ManagerKubeconfig string
	dir               string
}

// Option configures Start.
type Option func(*envtest.Environment, string) error

// Restartable keeps the serving certificate, CA and port across
// APIServer Stop/Start (a random cert dir would mint new certificates on a
// restart, which no client would trust), and bounds a stop to 5s before
// envtest SIGKILLs the apiserver: a graceful stop waits for every open
// watch.
func Restartable() Option {
	return func(te *envtest.Environment, dir string) error {
		certDir := filepath.Join(dir, "apiserver")
		if err := os.MkdirAll(certDir, 0o700); err != nil {
			return err
		}
		te.ControlPlane.APIServer = &envtest.APIServer{CertDir: certDir}
		te.ControlPlaneStopTimeout = 5 * time.Second
		return nil
	}
}

// Start starts the control plane, installs the CRDs of repoRoot/config/crd
// and the manager's role, and writes kubeconfigs under dir.
func Start(repoRoot, dir string, opts ...Option) (*Server, error) {
	te := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(repoRoot, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	for _, o := range opts {
		if err := o(te, dir); err != nil {
			return nil, err
		}
	}
	cfg, err := te.Start()
	if err != nil {
		return nil, fmt.Errorf("start envtest: %w", err)
	}
	s := &Server{Env: te, Config: cfg, dir: dir}
	if err := s.setUp(repoRoot); err != nil {
		_ = te.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) setUp(repoRoot string) error {
	scheme := k8sruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := fnletv1.AddToScheme(scheme); err != nil {
		return err
	}
	c, err := client.NewWithWatch(s.Config, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	s.Client = c
	if err := bindManagerRole(c, filepath.Join(repoRoot, "config", "rbac", "role.yaml")); err != nil {
		return fmt.Errorf("rbac: %w", err)
	}
	// Installed, not bound: a namespace opts in with GrantNamespace.
	if err := createClusterRole(c, filepath.Join(repoRoot, "config", "rbac", "namespace_reader_role.yaml")); err != nil {
		return fmt.Errorf("rbac: %w", err)
	}
	s.ManagerKubeconfig, err = s.Kubeconfig(envtest.User{Name: ManagerUser})
	return err
}

// Kubeconfig writes a kubeconfig for user and returns its path.
func (s *Server) Kubeconfig(user envtest.User) (string, error) {
	u, err := s.Env.AddUser(user, nil)
	if err != nil {
		return "", fmt.Errorf("add user %s: %w", user.Name, err)
	}
	b, err := u.KubeConfig()
	if err != nil {
		return "", fmt.Errorf("kubeconfig of %s: %w", user.Name, err)
	}
	path := filepath.Join(s.dir, user.Name+".kubeconfig")
	return path, os.WriteFile(path, b, 0o600)
}

// Stop stops the control plane.
func (s *Server) Stop() error { return s.Env.Stop() }

// GrantNamespace is a namespace's opt-in to Secrets and ConfigMaps for
// its calls, as users do it: a RoleBinding in ns of the ClusterRole
// config/rbac/namespace_reader_role.yaml to ManagerUser. Granting twice is
// fine.
func GrantNamespace(ctx context.Context, c client.Client, ns string) error {
	err := c.Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "fnlet-namespace-reader", Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "fnlet-namespace-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: ManagerUser}},
	})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("grant namespace %s: %w", ns, err)
	}
	return nil
}

func createClusterRole(c client.Client, rolePath string) error {
	b, err := os.ReadFile(rolePath)
	if err != nil {
		return err
	}
	var role rbacv1.ClusterRole
	if err := yaml.Unmarshal(b, &role); err != nil {
		return fmt.Errorf("%s: %w", rolePath, err)
	}
	return c.Create(context.Background(), &role)
}

// Suite is the setup the integration and chaos suites' TestMain share: a
// work directory, the manager binary (with fnlet-init beside it) built
// into it, and a control plane.
type Suite struct {
	*Server
	Dir        string
	ManagerBin string
}

// StartSuite makes the work directory (named prefix-*), builds the manager
// and starts the control plane with opts. Stop undoes it.
func StartSuite(prefix string, opts ...Option) (*Suite, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", prefix+"-")
	if err != nil {
		return nil, err
	}
	s := &Suite{Dir: dir}
	if s.ManagerBin, err = testenv.BuildManager(dir); err == nil {
		s.Server, err = Start(root, dir, opts...)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// Stop stops the control plane and removes the work directory.
func (s *Suite) Stop() error {
	err := s.Server.Stop()
	os.RemoveAll(s.Dir)
	return err
}

// ManagerNamespace is the manager's own namespace: its node Leases live there.
const ManagerNamespace = "fnlet-system"

// bindManagerRole creates the generated roles (role.yaml: the ClusterRole,
// then the Role in ManagerNamespace) and binds ManagerUser to both.
func bindManagerRole(c client.Client, rolePath string) error {
	b, err := os.ReadFile(rolePath)
	if err != nil {
		return err
	}
	docs := strings.Split(string(b), "\n---\n")
	if len(docs) != 2 {
		return fmt.Errorf("%s: %d documents, want a ClusterRole and a Role", rolePath, len(docs))
	}
	var role rbacv1.ClusterRole
	var nsRole rbacv1.Role
	if err := yaml.Unmarshal([]byte(docs[0]), &role); err != nil {
		return fmt.Errorf("%s: %w", rolePath, err)
	}
	if err := yaml.Unmarshal([]byte(docs[1]), &nsRole); err != nil {
		return fmt.Errorf("%s: %w", rolePath, err)
	}
	ctx := context.Background()
	subjects := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: ManagerUser}}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsRole.Namespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	for _, o := range []client.Object{
		&role,
		&rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: ManagerUser},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects:   subjects,
		},
		&nsRole,
		&rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: ManagerUser, Namespace: nsRole.Namespace},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: nsRole.Name},
			Subjects:   subjects,
		},
	} {
		if err := c.Create(ctx, o); err != nil {
			return fmt.Errorf("create %T %s: %w", o, o.GetName(), err)
		}
	}
	return nil
}
