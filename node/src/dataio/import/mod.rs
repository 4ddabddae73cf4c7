//! `kiln import --node FHIR_BASE FILE.ndjson | DIR | -`: loads NDJSON (one resource per line; a
//! file may hold one type or many) through batch Bundles ([`send`]), with a progress bar,
//! resumable ([`state`]), reporting every rejected line as `file:line: reason`.
//!
//! A reader thread cuts the input into chunks (`--batch` lines or `--batch-bytes`, whichever
//! comes first), checking each line locally first: JSON syntax, a `resourceType` of letters, an
//! id (when present) of FHIR id characters; a line that fails is rejected without being sent.
//! `--concurrency` sender threads post chunks; the main thread settles them in input order and
//! records the settled position in the state file, so a rerun (after an interruption or a
//! failure) starts after the last settled chunk and sends again at most the chunks that were
//! in flight, which is harmless for lines with ids (PUT). Chunks in flight at once may be
//! applied in either order: a file that updates the same resource on several lines needs
//! `--concurrency 1` to keep the last line's version.

pub mod send;
pub mod state;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;

use self::send::{Line, Outcome, Sender};
use self::state::{FileState, ImportState, Reject};
use super::client::Conn;
use super::DataIoError;

/// Longest line accepted (longer ones are rejected without being held in memory).
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// What `kiln import` was asked.
pub struct ImportJob {
    /// FHIR base URL of any node.
    pub node: String,
    /// A file, a folder of `*.ndjson` files, or `-` for stdin.
    pub input: PathBuf,
    pub conn: Conn,
    /// Resume file; default next to the input (none for stdin).
    pub state: Option<PathBuf>,
    /// Forget the state and import everything again.
    pub restart: bool,
    pub batch: usize,
    pub batch_bytes: usize,
    pub concurrency: usize,
}

/// The result, for the summary and the exit code.
#[derive(Debug, Default)]
pub struct Report {
    /// Resources written by this run.
    pub imported: u64,
    /// Lines rejected by this run.
    pub rejected_now: u64,
    /// Every rejected line the state knows for these inputs (this run and earlier ones), as
    /// (file, line, reason), at most `state::MAX_KEPT` per file.
    pub rejects: Vec<(String, u64, String)>,
    /// Rejected lines in all (earlier runs included).
    pub rejected_total: u64,
    /// Lines skipped because an earlier run settled them.
    pub skipped_lines: u64,
    pub secs: f64,
    pub state_file: Option<PathBuf>,
}

impl Report {
    pub fn per_sec(&self) -> f64 {
        self.imported as f64 / self.secs.max(1e-9)
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn bar(len: Option<u64>, template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len.unwrap_or(0));
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        b.set_style(style);
    }
    b.enable_steady_tick(std::time::Duration::from_millis(200));
    b
}

/// One input: its name in the state and reports, and where to read it.
struct Input {
    name: String,
    path: Option<PathBuf>,
}

fn inputs(job: &ImportJob) -> Result<(Vec<Input>, Option<PathBuf>), DataIoError> {
    let p = &job.input;
    if p.as_os_str() == "-" {
        return Ok((vec![Input { name: "-".into(), path: None }], job.state.clone()));
    }
    let meta = std::fs::metadata(p).map_err(DataIoError::io(p))?;
    if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(DataIoError::io(p))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "ndjson"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DataIoError::Usage(format!("{} holds no *.ndjson file", p.display())));
        }
        let list = files.into_iter().map(|f| Input { name: f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), path: Some(f) }).collect();
        return Ok((list, Some(job.state.clone().unwrap_or_else(|| p.join(".kiln-import")))));
    }
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string());
    let mut default_state = p.clone().into_os_string();
    default_state.push(".kiln-import");
    Ok((vec![Input { name, path: Some(p.clone()) }], Some(job.state.clone().unwrap_or_else(|| default_state.into()))))
}

/// A run of lines to send together, and where the input stands after it.
struct Chunk {
    seq: u64,
    file: usize,
    lines: Vec<Line>,
    /// Lines refused locally (bad JSON, no resourceType...).
    local: Vec<Reject>,
    end_offset: u64,
    end_line: u64,
    /// Last chunk of its file.
    last: bool,
}

struct Settled {
    seq: u64,
    result: Result<(u64, Vec<Reject>), DataIoError>,
}

pub fn run(job: &ImportJob) -> Result<Report, DataIoError> {
    if job.batch == 0 || job.concurrency == 0 || job.batch_bytes == 0 {
        return Err(DataIoError::Usage("--batch, --batch-bytes and --concurrency must be positive".into()));
    }
    let (inputs, state_path) = inputs(job)?;
    let mut st = match (&state_path, job.restart) {
        (Some(p), false) => ImportState::load(p)?,
        _ => ImportState::default(),
    };
    // Where each input resumes; a file that changed under its state is refused.
    let mut starts = Vec::new();
    let mut total_bytes = 0u64;
    let mut skipped_lines = 0;
    for input in &inputs {
        let fs = st.files.entry(input.name.clone()).or_default().clone();
        if let Some(path) = &input.path {
            let len = std::fs::metadata(path).map_err(DataIoError::io(path))?.len();
            if fs.offset > len || (fs.offset > 0 && state::prefix_sha256(path, fs.offset)? != fs.prefix_sha256) {
                return Err(DataIoError::Usage(format!(
                    "{} changed since {} recorded its progress; pass --restart to import it from the start",
                    path.display(),
                    state_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
                )));
            }
            total_bytes += len - fs.offset;
        }
        skipped_lines += fs.line;
        starts.push((fs.offset, fs.line));
    }
    let sender = Sender { client: job.conn.client(Some(std::time::Duration::from_secs(300)))?, conn: job.conn.clone(), base: job.node.trim_end_matches('/').to_string() };
    let progress = bar(Some(total_bytes), "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {msg}");
    let started = Instant::now();
    let mut report = Report { skipped_lines, state_file: state_path.clone(), ..Report::default() };
    let (chunk_tx, chunk_rx) = crossbeam_channel::bounded::<Chunk>(job.concurrency * 2);
    let (work_tx, work_rx) = crossbeam_channel::bounded::<(u64, Vec<Line>)>(job.concurrency);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Settled>();
    let outcome = std::thread::scope(|scope| -> Result<(), DataIoError> {
        let reader = scope.spawn(|| read_all(&inputs, &starts, job, chunk_tx));
        for _ in 0..job.concurrency {
            let (rx, tx, sender) = (work_rx.clone(), done_tx.clone(), &sender);
            scope.spawn(move || {
                for (seq, lines) in rx {
                    let refs: Vec<&Line> = lines.iter().collect();
                    let result = sender.send(&refs).map(|outcomes| {
                        let mut ok = 0;
                        let mut rejects = Vec::new();
                        for (line, o) in lines.iter().zip(outcomes) {
                            match o {
                                Outcome::Ok => ok += 1,
                                Outcome::Rejected(reason) => rejects.push(Reject { line: line.no, reason }),
                            }
                        }
                        (ok, rejects)
                    });
                    if tx.send(Settled { seq, result }).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let result = settle(&mut st, state_path.as_deref(), &inputs, chunk_rx, work_tx, &done_rx, &progress, &mut report);
        drop(done_rx);
        let read = reader.join().map_err(|_| DataIoError::Storage("the reader thread panicked".into()))?;
        result.and(read)
    });
    progress.finish_and_clear();
    report.secs = started.elapsed().as_secs_f64();
    for input in &inputs {
        if let Some(fs) = st.files.get(&input.name) {
            report.rejected_total += fs.rejected;
            report.rejects.extend(fs.rejects.iter().map(|r| (input.name.clone(), r.line, r.reason.clone())));
        }
    }
    outcome.map(|()| report)
}

/// The main thread: hands chunks to the senders and settles their results in input order.
#[allow(clippy::too_many_arguments)]
fn settle(
    st: &mut ImportState,
    state_path: Option<&Path>,
    inputs: &[Input],
    chunks: crossbeam_channel::Receiver<Chunk>,
    work: crossbeam_channel::Sender<(u64, Vec<Line>)>,
    done: &crossbeam_channel::Receiver<Settled>,
    progress: &indicatif::ProgressBar,
    report: &mut Report,
) -> Result<(), DataIoError> {
    // Chunks sent and not settled yet (their positions and local rejects), by sequence.
    let mut open: BTreeMap<u64, Chunk> = BTreeMap::new();
    let mut results: BTreeMap<u64, (u64, Vec<Reject>)> = BTreeMap::new();
    let mut next = 0u64;
    let mut in_flight = 0usize;
    let mut chunks_open = true;
    let mut last_offset: Vec<u64> = inputs.iter().map(|i| st.files.get(&i.name).map(|f| f.offset).unwrap_or(0)).collect();
    loop {
        // Feed the senders while they have room (at most `concurrency` bundles queued).
        while chunks_open && in_flight < work.capacity().unwrap_or(1) * 2 {
            match chunks.recv() {
                Ok(mut c) => {
                    let lines = std::mem::take(&mut c.lines);
                    if lines.is_empty() {
                        results.insert(c.seq, (0, Vec::new()));
                    } else {
                        work.send((c.seq, lines)).map_err(|_| DataIoError::Storage("the senders stopped".into()))?;
                        in_flight += 1;
                    }
                    open.insert(c.seq, c);
                }
                Err(_) => chunks_open = false,
            }
        }
        // Settle in order whatever has come back.
        while let Some((ok, rejects)) = results.remove(&next) {
            let c = open.remove(&next).ok_or_else(|| DataIoError::Storage("a result for an unknown chunk".into()))?;
            let input = &inputs[c.file];
            let fs: &mut FileState = st.files.entry(input.name.clone()).or_default();
            let mut all: Vec<Reject> = c.local;
            all.extend(rejects);
            all.sort_by_key(|r| r.line);
            report.imported += ok;
            report.rejected_now += all.len() as u64;
            fs.imported += ok;
            fs.add_rejects(all);
            fs.offset = c.end_offset;
            fs.line = c.end_line;
            fs.done = c.last;
            if let Some(path) = &input.path {
                fs.prefix_sha256 = state::prefix_sha256(path, fs.offset)?;
                progress.inc(fs.offset.saturating_sub(last_offset[c.file]));
                last_offset[c.file] = fs.offset;
            }
            if let Some(p) = state_path {
                st.save(p)?;
            }
            progress.set_message(format!("{} imported, {} rejected", report.imported, report.rejected_now));
            next += 1;
        }
        if !chunks_open && open.is_empty() {
            return Ok(());
        }
        let s = done.recv().map_err(|_| DataIoError::Storage("the senders stopped".into()))?;
        in_flight -= 1;
        results.insert(s.seq, s.result?);
    }
}

/// The fields a line must have.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "resourceType")]
    resource_type: Option<serde_json::Value>,
    id: Option<serde_json::Value>,
}

/// Checks one line locally: `Ok(None)` for a blank line.
pub fn check_line(no: u64, text: &[u8]) -> Result<Option<Line>, String> {
    let trimmed = text.trim_ascii();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let head: Head = serde_json::from_slice(trimmed).map_err(|e| format!("not a JSON object: {e}"))?;
    let rtype = match head.resource_type {
        Some(serde_json::Value::String(t)) if !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphabetic()) => t,
        Some(_) => return Err("resourceType is not a resource type name".into()),
        None => return Err("no resourceType".into()),
    };
    let id = match head.id {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(id)) if crate::fhir::valid_id(&id) => Some(id),
        Some(other) => return Err(format!("id {other} is not a FHIR id ([A-Za-z0-9-.]{{1,64}})")),
    };
    Ok(Some(Line { no, rtype, id, json: trimmed.to_vec() }))
}

/// Reads one line of at most [`MAX_LINE`] bytes into `buf` (without its newline). Returns the
/// bytes consumed (0 at the end) and whether the line was longer (then `buf` holds its start).
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<(u64, bool)> {
    buf.clear();
    let (mut consumed, mut too_long) = (0u64, false);
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Ok((consumed, too_long));
        }
        let (part, found) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], Some(i + 1)),
            None => (avail, None),
        };
        if buf.len() + part.len() > MAX_LINE {
            too_long = true;
        } else {
            buf.extend_from_slice(part);
        }
        let used = found.unwrap_or(avail.len());
        r.consume(used);
        consumed += used as u64;
        if found.is_some() {
            return Ok((consumed, too_long));
        }
    }
}

/// The reader thread: every input from its resume point, cut into chunks.
fn read_all(inputs: &[Input], starts: &[(u64, u64)], job: &ImportJob, out: crossbeam_channel::Sender<Chunk>) -> Result<(), DataIoError> {
    let mut seq = 0u64;
    for (file, (input, &(offset, line))) in inputs.iter().zip(starts).enumerate() {
        let (src, label): (Box<dyn Read + Send>, String) = match &input.path {
            Some(p) => {
                let mut f = std::fs::File::open(p).map_err(DataIoError::io(p))?;
                f.seek(SeekFrom::Start(offset)).map_err(DataIoError::io(p))?;
                (Box::new(f), p.display().to_string())
            }
            None => (Box::new(std::io::stdin()), "stdin".into()),
        };
        let mut r = BufReader::with_capacity(1 << 20, src);
        let (mut pos, mut no) = (offset, 0u64);
        let mut buf = Vec::new();
        // Stdin cannot seek: skip the lines an earlier run settled.
        if input.path.is_none() {
            while no < line {
                let (n, _) = read_line(&mut r, &mut buf).map_err(DataIoError::io(&label))?;
                if n == 0 {
                    break;
                }
                no += 1;
            }
        } else {
            no = line;
        }
        let mut chunk = Chunk { seq, file, lines: Vec::new(), local: Vec::new(), end_offset: pos, end_line: no, last: false };
        let mut bytes = 0usize;
        let mut targets: HashSet<(String, String)> = HashSet::new();
        loop {
            let (n, too_long) = read_line(&mut r, &mut buf).map_err(DataIoError::io(&label))?;
            if n == 0 {
                break;
            }
            no += 1;
            let checked = if too_long { Err(format!("longer than {MAX_LINE} bytes")) } else { check_line(no, &buf) };
            // The same resource twice in one bundle: the second goes in the next one.
            let repeat = matches!(&checked, Ok(Some(l)) if l.id.as_ref().is_some_and(|id| targets.contains(&(l.rtype.clone(), id.clone()))));
            if repeat || (matches!(checked, Ok(Some(_))) && (chunk.lines.len() >= job.batch || bytes >= job.batch_bytes)) {
                seq += 1;
                let next = Chunk { seq, file, lines: Vec::new(), local: Vec::new(), end_offset: chunk.end_offset, end_line: chunk.end_line, last: false };
                if out.send(std::mem::replace(&mut chunk, next)).is_err() {
                    return Ok(());
                }
                bytes = 0;
                targets.clear();
            }
            pos += n;
            match checked {
                Ok(None) => {}
                Ok(Some(l)) => {
                    bytes += l.json.len();
                    if let Some(id) = &l.id {
                        targets.insert((l.rtype.clone(), id.clone()));
                    }
                    chunk.lines.push(l);
                }
                Err(reason) => chunk.local.push(Reject { line: no, reason }),
            }
            chunk.end_offset = pos;
            chunk.end_line = no;
        }
        chunk.last = true;
        seq += 1;
        if out.send(chunk).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked_before_anything_is_sent() {
        let ok = check_line(3, br#" {"resourceType":"Patient","id":"a-1.b","name":[{"text":"x"}]} "#).unwrap().unwrap();
        assert_eq!((ok.no, ok.rtype.as_str(), ok.id.as_deref()), (3, "Patient", Some("a-1.b")));
        assert!(check_line(1, br#"{"resourceType":"Observation"}"#).unwrap().unwrap().id.is_none());
        assert!(check_line(1, b"   ").unwrap().is_none());
        for bad in [&br#"{"resourceType":"Patient","#[..], br#"{"id":"x"}"#, br#"{"resourceType":"Pa/tient"}"#, br#"{"resourceType":"Patient","id":"../x"}"#, br#"[1]"#, br#"{"resourceType":"Patient","id":7}"#] {
            assert!(check_line(1, bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn long_lines_are_skipped_without_being_kept() {
        let mut text = vec![b'x'; MAX_LINE + 10];
        text.extend_from_slice(b"\nnext\nlast");
        let mut r = BufReader::new(text.as_slice());
        let mut buf = Vec::new();
        let (n, long) = read_line(&mut r, &mut buf).unwrap();
        assert_eq!((n, long), (MAX_LINE as u64 + 11, true));
        assert!(buf.len() <= MAX_LINE);
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), (5, false));
        assert_eq!(buf, b"next");
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), (4, false));
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut r, &mut buf).unwrap().0, 0);
    }
}
