/**
 * The README's TypeScript example is examples/quickstart.ts, character for
 * character, and that example runs against a real server.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";
import { EventType, Stage } from "../src/index.js";
import { collect, REPO, startServer } from "./server.js";

const BEGIN = "<!-- typescript-example:begin -->";
const END = "<!-- typescript-example:end -->";
const EXAMPLE = join(REPO, "client/typescript/examples/quickstart.ts");

/** The one ```ts block between the markers of README.md. */
function documentedExample(): string {
  const text = readFileSync(join(REPO, "README.md"), "utf8");
  const start = text.indexOf(BEGIN);
  const end = text.indexOf(END);
  assert.ok(start >= 0 && end > start, "README.md has no TypeScript example between markers");
  const blocks = [...text.slice(start + BEGIN.length, end).matchAll(/^```ts[ \t]*\n([\s\S]*?)^```/gm)];
  assert.equal(blocks.length, 1, "expected one ts block between the markers");
  return blocks[0][1];
}

test("the README shows examples/quickstart.ts as it is", () => {
  assert.equal(documentedExample(), readFileSync(EXAMPLE, "utf8"));
});

test("examples/quickstart.ts registers, gets a second person's approval and prints the replayed log", async () => {
  const server = await startServer();
  const registry = server.client({ actor: "carol" });
  try {
    const run = await promisify(execFile)("node", [join(REPO, "client/typescript/dist/examples/quickstart.js")], {
      env: { ...process.env, MODELREG_ADDRESS: server.address },
      timeout: 60_000,
    });
    const printed = run.stdout.trim().split("\n").map((line) => line.split(" "));
    const logged = await collect(registry.listEvents());
    assert.deepEqual(
      printed,
      logged.map((e) => [String(e.sequence), EventType[e.type], Stage[e.toStage]]),
    );
    assert.deepEqual(printed[printed.length - 1].slice(1), ["STAGE_CHANGED", "PRODUCTION"]);
    assert.equal(logged.find((e) => e.type === EventType.TRANSITION_APPROVED)?.actor, "bob");
    assert.equal((await registry.getModel("churn")).productionVersion, 1n);
  } finally {
    registry.close();
    await server.dispose();
  }
});
