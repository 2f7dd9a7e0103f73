/** Tokens and TLS, against a real modelreg-server started with a token file or a test CA. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, EventType, type RegistryClient } from "../src/index.js";
import { collect, rejection, startServer } from "./server.js";

test("with a token file: no token is UNAUTHENTICATED, a reader's write is PERMISSION_DENIED, a publisher acts as itself", async () => {
  const server = await startServer({
    tokens: [
      { identity: "alice", roles: ["publisher"] },
      { identity: "rita", roles: ["reader"] },
    ],
  });
  const clients: RegistryClient[] = [];
  const as = (token?: string, actor?: string) => {
    const c = server.client({ token, actor });
    clients.push(c);
    return c;
  };
  try {
    const anonymous = as(undefined, "alice"); // the actor header is no identity here
    const reader = as(server.tokens.get("rita")!.token);
    const publisher = as(server.tokens.get("alice")!.token, "mallory");
    const forged = as("not-a-token");

    assert.equal((await rejection(anonymous.createModel({ name: "churn" }))).code, Code.Unauthenticated);
    assert.equal((await rejection(anonymous.getModel("churn"))).code, Code.Unauthenticated);
    assert.equal((await rejection(forged.getModel("churn"))).code, Code.Unauthenticated);
    const denied = await rejection(reader.createModel({ name: "churn" }));
    assert.equal(denied.code, Code.PermissionDenied);
    assert.deepEqual(await collect(reader.listEvents()), []); // a reader reads, and nothing was written

    const created = await publisher.createModel({ name: "churn" });
    assert.equal(created.createdBy, "alice"); // the token's identity, not x-modelreg-actor
    const events = await collect(reader.listEvents());
    assert.deepEqual(events.map((e) => [e.type, e.actor]), [[EventType.MODEL_CREATED, "alice"]]);

    // A refusal is final for a watch too: it is not retried as a broken connection.
    const watch = anonymous.watch({}, { afterSequence: 0n, maxReconnects: 3 });
    const refused = await rejection(collect(watch));
    assert.equal(refused.code, Code.Unauthenticated);
    assert.equal(watch.reconnects, 0);
  } finally {
    for (const c of clients) c.close();
    await server.dispose();
  }
});

test("over TLS: a client trusting the test CA works; one that does not, or speaks plaintext, is refused", async () => {
  const server = await startServer({ tls: true });
  const trusting = server.client({ actor: "alice" }); // caCert: the test CA
  const systemRoots = server.client({ actor: "alice", caCert: undefined, tls: true });
  const plaintext = server.client({ actor: "alice", caCert: undefined, tls: false });
  try {
    assert.equal((await trusting.createModel({ name: "churn" })).createdBy, "alice");
    assert.equal((await trusting.getModel("churn")).name, "churn");
    const watch = trusting.watch({}, { afterSequence: 0n });
    for await (const item of watch) {
      assert.equal(item.kind.case, "event");
      assert.equal(item.kind.value?.type, EventType.MODEL_CREATED);
      break;
    }

    const untrusted = await rejection(systemRoots.getModel("churn"));
    // Node's own roots do not include the test CA: the handshake fails in the client.
    assert.equal((untrusted.cause as NodeJS.ErrnoException | undefined)?.code, "UNABLE_TO_VERIFY_LEAF_SIGNATURE", untrusted.message);
    const plain = await rejection(plaintext.getModel("churn"));
    // The server drops a connection that does not start with a TLS handshake.
    assert.equal(plain.metadata.has("grpc-status"), false);
    assert.equal(plain.code, Code.Canceled, plain.message);
    assert.deepEqual((await collect(trusting.listEvents())).map((e) => e.type), [EventType.MODEL_CREATED]);
  } finally {
    trusting.close();
    systemRoots.close();
    plaintext.close();
    await server.dispose();
  }
});
