/**
 * A dead man's switch for a run that starts daemons in a temp dir: a detached shell that waits for the
 * run's process to disappear without cleaning up (SIGKILLed by a test runner's timeout, say), then stops
 * every process whose command line names that temp dir (the daemons, rsync daemons, processing commands:
 * only this run's processes mention its unique directory) and removes the directory. A run that exits
 * normally cleans up itself and stops the watchdog first.
 */
import { spawn } from 'node:child_process'

export const DEFAULT_WATCHDOG_GRACE_S = 5

const SCRIPT = `
while kill -0 "$WATCH_PID" 2>/dev/null; do sleep 1; done
ours () { for p in /proc/[0-9]*; do
  pid=\${p#/proc/}; [ "$pid" = "$$" ] && continue
  case "$(tr '\\0' ' ' < "$p/cmdline" 2>/dev/null)" in *"$WATCH_ROOT"/*) echo "$pid";; esac
done; }
pids=$(ours); [ -n "$pids" ] && kill -TERM $pids 2>/dev/null
sleep "$WATCH_GRACE_S"
pids=$(ours); [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
rm -rf "$WATCH_ROOT"
`

export interface Watchdog {
  stop: () => void
}

/** Watches `pid` (default this process); once it is gone, stops the processes naming `root` and removes it. */
export function startWatchdog (root: string, pid = process.pid, graceS = DEFAULT_WATCHDOG_GRACE_S): Watchdog {
  // The root goes in the environment, not argv, so the watchdog's own command line does not name it.
  const proc = spawn('/bin/sh', ['-c', SCRIPT], {
    detached: true,
    stdio: 'ignore',
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', WATCH_PID: String(pid), WATCH_ROOT: root, WATCH_GRACE_S: String(graceS) }
  })
  proc.on('error', () => {})
  proc.unref()
  return {
    stop: () => {
      if (proc.exitCode == null && proc.signalCode == null) proc.kill('SIGTERM')
    }
  }
}
