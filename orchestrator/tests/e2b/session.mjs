// The official E2B JavaScript SDK (npm `e2b`), unchanged, against
// `ironclaw serve --e2b`: one short session. Run by
// orchestrator/tests/e2b_python.rs with E2B_API_URL, E2B_SANDBOX_URL,
// E2B_API_KEY and E2B_JS_SDK (the SDK's entry in target/node-e2b) set;
// pauses the sandbox and resumes it with `Sandbox.connect`; prints
// `e2b-test: PASS` at the end.

const { Sandbox, CommandExitError } = await import(process.env.E2B_JS_SDK);

function check(cond, what) {
  if (!cond) throw new Error(`failed: ${what}`);
  console.log(`ok: ${what}`);
}

const sbx = await Sandbox.create({ timeoutMs: 120_000, metadata: { suite: "e2b-js" } });
check(await sbx.isRunning(), "create: running");
const r = await sbx.commands.run("python3 -c 'print(6*7)'; echo err >&2");
check(r.stdout === "42\n" && r.stderr === "err\n" && r.exitCode === 0, "commands.run");
try {
  await sbx.commands.run("exit 3");
  throw new Error("a non-zero exit did not throw");
} catch (e) {
  check(e instanceof CommandExitError && e.exitCode === 3, "non-zero exit throws CommandExitError");
}
const heard = [];
await sbx.commands.run("echo first; sleep 2; echo second", { onStdout: (d) => heard.push(d) });
check(heard.join("") === "first\nsecond\n", "onStdout");
await sbx.files.write("/tmp/js/a.txt", "hello js");
check((await sbx.files.read("/tmp/js/a.txt")) === "hello js", "files.write and read");
check((await sbx.files.list("/tmp/js")).map((e) => e.name).join() === "a.txt", "files.list");
check(await sbx.files.exists("/tmp/js/a.txt"), "files.exists");
const h = await sbx.commands.run("cat > /tmp/in", { background: true, stdin: true });
await sbx.commands.sendStdin(h.pid, "hi\n");
for (let i = 0; i < 100 && !((await sbx.files.exists("/tmp/in")) && (await sbx.files.read("/tmp/in")) === "hi\n"); i++) {
  await new Promise((r) => setTimeout(r, 200));
}
check((await sbx.files.read("/tmp/in")) === "hi\n", "background command and sendStdin");
check(await sbx.commands.kill(h.pid), "commands.kill");
const listed = await Sandbox.list().nextItems();
check(listed.some((s) => s.sandboxId === sbx.sandboxId), "Sandbox.list");
check((await sbx.pause()) === true, "pause");
check((await Sandbox.getInfo(sbx.sandboxId)).state === "paused", "getInfo: paused");
const paused = await Sandbox.list({ query: { state: ["paused"] } }).nextItems();
check(paused.map((s) => s.sandboxId).join() === sbx.sandboxId, "Sandbox.list({state: [paused]})");
const again = await Sandbox.connect(sbx.sandboxId);
check((await Sandbox.getInfo(sbx.sandboxId)).state === "running", "Sandbox.connect resumes it");
check((await again.files.read("/tmp/js/a.txt")) === "hello js", "its file is there after the resume");
await sbx.kill();
check(!(await sbx.isRunning()), "kill");
console.log("e2b-test: PASS");
