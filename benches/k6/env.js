// Settings from the environment (k6 passes the shell's to __ENV), shared by
// proxy.js and admin.js. A bad value stops the run with its name.

// A positive integer, or `dflt` when unset or empty.
export function int(name, dflt) {
  const v = __ENV[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, not ${v}`);
  return n;
}

// A number >= 0, or `dflt` when unset or empty.
export function num(name, dflt) {
  const v = __ENV[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number >= 0, not ${v}`);
  return n;
}
