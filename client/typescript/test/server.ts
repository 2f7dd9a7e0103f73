/**
 * A real modelreg-server process per test, as the Python suite has.
 *
 * The binary is `MODELREG_SERVER_BIN` (default: target/debug/modelreg-server
 * of this repository), started on 127.0.0.1:0 with a fresh SQLite database in
 * a temporary folder; it reports the port it bound in its `--ready-file`, so
 * no test picks a port another process could take first. Readiness is that
 * file, then `grpc.health.v1.Health/Check` answering SERVING; there is no fixed
 * sleep. A test can stop the process (SIGTERM or SIGKILL) and start it again
 * on the same port and database, and can start it with a token file and a
 * TLS certificate signed by a test CA of its own.
 */
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { ConnectError, connect, type ConnectOptions } from "../src/index.js";

/** The repository root (this file runs from client/typescript/dist/test). */
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
const START_TIMEOUT_MS = 30_000;

export function serverBinary(): string {
  if (process.env.MODELREG_SERVER_BIN) return process.env.MODELREG_SERVER_BIN;
  const target = process.env.CARGO_TARGET_DIR ? resolve(REPO, process.env.CARGO_TARGET_DIR) : join(REPO, "target");
  return join(target, "debug", "modelreg-server");
}

/** A token the server knows, with its identity and roles. */
export interface Token {
  identity: string;
  roles: string[];
  token: string;
}

export interface TestCa {
  /** The CA certificate a client trusts (PEM file). */
  caCert: string;
  /** The server's certificate, for localhost and 127.0.0.1, signed by the CA. */
  serverCert: string;
  serverKey: string;
}

export interface ServerOptions {
  tokens?: Omit<Token, "token">[];
  tls?: boolean;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Makes a CA and a server certificate for localhost and 127.0.0.1 with openssl, as the README shows. */
export function makeTestCa(dir: string): TestCa {
  const run = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
    "-subj", "/CN=modelreg-test-ca", "-keyout", "ca.key", "-out", "ca.pem");
  run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr");
  writeFileSync(join(dir, "san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
    "-days", "2", "-extfile", "san.ext", "-out", "server.pem");
  return { caCert: join(dir, "ca.pem"), serverCert: join(dir, "server.pem"), serverKey: join(dir, "server.key") };
}

/** One modelreg-server process that can be stopped and started again on the same database. */
export class ServerProcess {
  readonly workdir = mkdtempSync(join(tmpdir(), "modelreg-ts-"));
  readonly database = join(this.workdir, "registry.db");
  /** Undefined until the first start reports the port it bound; kept for restarts. */
  port: number | undefined;
  /** The tokens of the token file, when started with one. */
  readonly tokens = new Map<string, Token>();
  /** The test CA, when started with TLS. */
  readonly ca: TestCa | undefined;
  private proc: ChildProcess | undefined;
  private exit: Promise<number | null> | undefined;
  private starts = 0;
  private readonly tokenFile: string | undefined;

  constructor(readonly options: ServerOptions = {}) {
    if (options.tokens) {
      let toml = "";
      for (const t of options.tokens) {
        const token = randomBytes(32).toString("hex");
        this.tokens.set(t.identity, { ...t, token });
        const sha = createHash("sha256").update(token).digest("hex");
        toml += `[[tokens]]\nidentity = "${t.identity}"\nroles = [${t.roles.map((r) => `"${r}"`).join(", ")}]\ntoken_sha256 = "${sha}"\n\n`;
      }
      this.tokenFile = join(this.workdir, "tokens.toml");
      writeFileSync(this.tokenFile, toml);
    }
    if (options.tls) {
      this.ca = makeTestCa(this.workdir);
    }
  }

  /** `host:port` to connect to. */
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** A client of this server, trusting the test CA when it serves TLS. */
  client(options: ConnectOptions = {}) {
    return connect(this.address, { caCert: this.ca?.caCert, ...options });
  }

  /** The output of the current (or last) run, for failure messages. */
  log(): string {
    const path = join(this.workdir, `server-${this.starts}.log`);
    return existsSync(path) ? readFileSync(path, "utf8") : "(no log)";
  }

  /** Starts the server and resolves once it answers SERVING. */
  async start(): Promise<void> {
    if (this.proc) throw new Error("already running");
    const binary = serverBinary();
    if (!existsSync(binary)) {
      throw new Error(`modelreg-server binary not found at ${binary}: run cargo build -p modelreg-server or set MODELREG_SERVER_BIN`);
    }
    this.starts += 1;
    // A new name per start: an old file must never pass for this start's.
    const ready = join(this.workdir, `server-${this.starts}.ready`);
    const args = [
      "--listen", this.port === undefined ? "127.0.0.1:0" : this.address,
      "--ready-file", ready,
      "--database-url", `sqlite://${this.database}`,
      "--heartbeat-interval", "1s",
      // Parallel servers must not fight over the dashboard's port.
      "--http-listen", "off",
    ];
    if (this.tokenFile) args.push("--auth-tokens", this.tokenFile);
    if (this.ca) args.push("--tls-cert", this.ca.serverCert, "--tls-key", this.ca.serverKey);
    const log = openSync(join(this.workdir, `server-${this.starts}.log`), "w");
    const proc = spawn(binary, args, {
      cwd: this.workdir,
      stdio: ["ignore", log, log],
      env: { ...process.env, NO_COLOR: "1", RUST_LOG: process.env.RUST_LOG ?? "info" },
    });
    closeSync(log);
    this.proc = proc;
    this.exit = new Promise((resolveExit) => proc.once("exit", (code, signal) => resolveExit(code ?? (signal ? -1 : null))));
    const deadline = Date.now() + START_TIMEOUT_MS;
    // The ready file, then SERVING.
    while (!existsSync(ready)) {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        this.proc = undefined;
        throw new Error(`modelreg-server exited while starting:\n${this.log()}`);
      }
      if (Date.now() > deadline) {
        await this.stop("SIGKILL");
        throw new Error(`modelreg-server wrote no ${ready} in time:\n${this.log()}`);
      }
      await sleep(20); // poll interval, not a readiness guess
    }
    const fields = Object.fromEntries(
      readFileSync(ready, "utf8").split("\n").filter((l) => l.includes("=")).map((l) => l.split("=", 2)),
    );
    const port = Number(String(fields.grpc).split(":").pop());
    if (this.port !== undefined && port !== this.port) throw new Error(`restarted on ${port}, not ${this.port}`);
    this.port = port;
    const probe = this.client();
    try {
      await probe.waitUntilServing(Math.max(1, deadline - Date.now()), 20);
    } finally {
      probe.close();
    }
  }

  /** Sends `signal` and waits for the process to exit; resolves to its exit code. */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
    const proc = this.proc;
    this.proc = undefined;
    if (!proc || !this.exit) return 0;
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
    const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
    try {
      return await this.exit;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops the server and removes its folder. */
  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.workdir, { recursive: true, force: true });
  }
}

/** Starts a server for one test; the caller disposes of it. */
export async function startServer(options: ServerOptions = {}): Promise<ServerProcess> {
  const server = new ServerProcess(options);
  try {
    await server.start();
  } catch (err) {
    await server.dispose();
    throw err;
  }
  return server;
}

/** Everything an async iterable yields (Array.fromAsync is Node 22). */
export async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

/** The error a call that must fail failed with; a call that succeeds fails the test. */
export async function rejection(promise: Promise<unknown>): Promise<ConnectError> {
  try {
    await promise;
  } catch (err) {
    return ConnectError.from(err);
  }
  assert.fail("the call succeeded");
}
