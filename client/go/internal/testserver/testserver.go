// Package testserver runs a real modelreg-server process for a test, as the
// Python suite's conftest.py does.
//
// The binary is MODELREG_SERVER_BIN (default: target/debug/modelreg-server of
// this repository), started on 127.0.0.1:0 with a fresh SQLite database in the
// test's temporary folder; it reports the port it bound in its --ready-file,
// so no test picks a port another process could take first. Readiness is that
// file, then grpc.health.v1.Health/Check answering SERVING; there is no fixed
// sleep. A test can stop the process (SIGTERM or SIGKILL) and start it again
// on the same port and database, and can start it with a token file and with
// a TLS certificate signed by a CA the test makes.
package testserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io/ioutil"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	modelreg "modelreg/client"
)

const startTimeout = 30 * time.Second

// Repo is the repository root (the real one, when a GOPATH links to client/go).
func Repo() string {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Dir(file)
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	return filepath.Join(dir, "..", "..", "..", "..")
}

// Binary is the modelreg-server under test.
func Binary() string {
	if bin := os.Getenv("MODELREG_SERVER_BIN"); bin != "" {
		return bin
	}
	target := os.Getenv("CARGO_TARGET_DIR")
	if target == "" {
		target = "target"
	}
	if !filepath.IsAbs(target) {
		target = filepath.Join(Repo(), target)
	}
	return filepath.Join(target, "debug", "modelreg-server")
}

// Token is a token the server knows.
type Token struct {
	Identity string
	Roles    []string
	Token    string
}

// Options says how the server is started.
type Options struct {
	// Tokens, when not empty, are written to a token file (--auth-tokens).
	Tokens []Token
	// TLS makes a test CA and a certificate for localhost and 127.0.0.1.
	TLS bool
}

// Server is one modelreg-server process that can be stopped and started again on the same database.
type Server struct {
	t       testing.TB
	dir     string
	opts    Options
	port    int
	starts  int
	cmd     *exec.Cmd
	exited  chan struct{}
	tokens  map[string]Token
	caCert  string
	tlsCert string
	tlsKey  string
}

// Start starts a server for t and stops it when t ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := &Server{t: t, dir: t.TempDir(), opts: opts, tokens: map[string]Token{}}
	if len(opts.Tokens) > 0 {
		var file strings.Builder
		for _, tok := range opts.Tokens {
			raw := make([]byte, 32)
			if _, err := rand.Read(raw); err != nil {
				t.Fatal(err)
			}
			tok.Token = hex.EncodeToString(raw)
			sum := sha256.Sum256([]byte(tok.Token))
			fmt.Fprintf(&file, "[[tokens]]\nidentity = %q\nroles = [\"%s\"]\ntoken_sha256 = %q\n\n",
				tok.Identity, strings.Join(tok.Roles, `", "`), hex.EncodeToString(sum[:]))
			s.tokens[tok.Identity] = tok
		}
		s.write("tokens.toml", []byte(file.String()))
	}
	if opts.TLS {
		s.makeCA()
	}
	s.Start()
	t.Cleanup(func() { s.Stop(syscall.SIGTERM) })
	return s
}

// Address is host:port to connect to.
func (s *Server) Address() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// Token is the token of identity in the token file.
func (s *Server) Token(identity string) string { return s.tokens[identity].Token }

// CACert is the PEM file of the test CA ("" without TLS).
func (s *Server) CACert() string { return s.caCert }

// Client dials the server (trusting the test CA when it serves TLS); closed when the test ends.
func (s *Server) Client(opts ...modelreg.Option) *modelreg.Client {
	s.t.Helper()
	if s.caCert != "" {
		opts = append([]modelreg.Option{modelreg.WithCACert(s.caCert)}, opts...)
	}
	c, err := modelreg.Dial(s.Address(), opts...)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

// Log is the output of the current (or last) run, for failure messages.
func (s *Server) Log() string {
	out, err := ioutil.ReadFile(s.logPath())
	if err != nil {
		return "(no log)"
	}
	return string(out)
}

func (s *Server) logPath() string {
	return filepath.Join(s.dir, fmt.Sprintf("server-%d.log", s.starts))
}

func (s *Server) write(name string, data []byte) string {
	path := filepath.Join(s.dir, name)
	if err := ioutil.WriteFile(path, data, 0o600); err != nil {
		s.t.Fatal(err)
	}
	return path
}

// Start starts the server (on the port of its first start, if any) and returns once it answers SERVING.
func (s *Server) Start() {
	s.t.Helper()
	if s.cmd != nil {
		s.t.Fatal("testserver: already running")
	}
	binary := Binary()
	if _, err := os.Stat(binary); err != nil {
		s.t.Fatalf("modelreg-server binary not found at %s: run cargo build -p modelreg-server or set MODELREG_SERVER_BIN", binary)
	}
	s.starts++
	// A new name per start: an old file must never pass for this start's.
	ready := filepath.Join(s.dir, fmt.Sprintf("server-%d.ready", s.starts))
	listen := "127.0.0.1:0"
	if s.port != 0 {
		listen = s.Address()
	}
	args := []string{
		"--listen", listen,
		"--ready-file", ready,
		"--database-url", "sqlite://" + filepath.Join(s.dir, "registry.db"),
		"--heartbeat-interval", "1s",
		// Parallel servers must not fight over the dashboard's port.
		"--http-listen", "off",
	}
	if len(s.tokens) > 0 {
		args = append(args, "--auth-tokens", filepath.Join(s.dir, "tokens.toml"))
	}
	if s.tlsCert != "" {
		args = append(args, "--tls-cert", s.tlsCert, "--tls-key", s.tlsKey)
	}
	log, err := os.Create(s.logPath())
	if err != nil {
		s.t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(binary, args...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	if os.Getenv("RUST_LOG") == "" {
		cmd.Env = append(cmd.Env, "RUST_LOG=info")
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) { _ = cmd.Wait(); close(exited) }(s.exited)

	deadline := time.Now().Add(startTimeout)
	for {
		text, err := ioutil.ReadFile(ready)
		if err == nil && strings.Contains(string(text), "grpc=") {
			for _, line := range strings.Split(string(text), "\n") {
				if addr := strings.TrimPrefix(line, "grpc="); addr != line {
					_, port, _ := net.SplitHostPort(addr)
					var p int
					fmt.Sscan(port, &p)
					if s.port != 0 && p != s.port {
						s.t.Fatalf("restarted on %d, not %d", p, s.port)
					}
					s.port = p
				}
			}
			break
		}
		select {
		case <-s.exited:
			s.cmd = nil
			s.t.Fatalf("modelreg-server exited while starting:\n%s", s.Log())
		default:
		}
		if time.Now().After(deadline) {
			s.Stop(syscall.SIGKILL)
			s.t.Fatalf("modelreg-server wrote no %s in time:\n%s", ready, s.Log())
		}
		time.Sleep(20 * time.Millisecond) // poll interval, not a readiness guess
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	probe := s.Client()
	defer probe.Close()
	if err := probe.WaitUntilServing(ctx); err != nil {
		s.Stop(syscall.SIGKILL)
		s.t.Fatalf("%v:\n%s", err, s.Log())
	}
}

// Stop sends sig and waits for the process to exit; it returns the exit code (-1 when killed by a signal).
func (s *Server) Stop(sig syscall.Signal) int {
	cmd := s.cmd
	s.cmd = nil
	if cmd == nil {
		return 0
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-s.exited
		s.t.Errorf("modelreg-server ignored %v for 20s:\n%s", sig, s.Log())
	}
	return cmd.ProcessState.ExitCode()
}

// makeCA makes a CA and a server certificate for localhost and 127.0.0.1 signed by it.
func (s *Server) makeCA() {
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			s.t.Fatal(err)
		}
		return k
	}
	caKey, serverKey := key(), key()
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "modelreg-test-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		s.t.Fatal(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(48 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	caParsed, err := x509.ParseCertificate(caDER)
	if err != nil {
		s.t.Fatal(err)
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caParsed, &serverKey.PublicKey, caKey)
	if err != nil {
		s.t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(serverKey)
	if err != nil {
		s.t.Fatal(err)
	}
	s.caCert = s.write("ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	s.tlsCert = s.write("server.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}))
	s.tlsKey = s.write("server.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
}
