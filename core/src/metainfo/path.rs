//! Turning a torrent's file names into paths that cannot leave the destination folder.
//!
//! A torrent's names are untrusted. Each path component is sanitized on its own: it can never be
//! empty, `.` or `..`, and never holds a separator, NUL or control character, so joining the
//! components under the destination folder stays inside it. Names that Windows refuses (device
//! names such as `CON`, trailing dots and spaces, `<>:"|?*`) are rewritten too, so a torrent lays out
//! the same files on every platform. Nothing here rejects a torrent: a name that libtorrent or
//! Transmission would load is always turned into something usable.

use std::collections::{BTreeMap, BTreeSet};

/// Longest component in bytes; most filesystems (ext4, NTFS in UTF-16 units, APFS) stop at 255.
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Longest suffix (dot included) kept as an extension when a component is shortened or renamed.
const MAX_EXTENSION_BYTES: usize = 32;

/// Device names that Windows reserves whatever the extension (`con.txt` is the console too).
const RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM0", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7",
    "COM8", "COM9", "LPT0", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

fn is_forbidden(c: char) -> bool {
    c.is_control() || matches!(c, '/' | '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*')
}

fn trim_trailing_dots_and_spaces(s: &mut String) {
    let kept = s.trim_end_matches(['.', ' ']).len();
    s.truncate(kept);
}

/// Sanitizes one path component taken from a torrent; `None` when nothing usable is left (an empty
/// component, `.` or `..`), in which case the caller drops the component.
///
/// Bytes that are not UTF-8 become U+FFFD; separators, NUL, control characters and characters
/// Windows forbids become `_`; trailing dots and spaces are removed; a Windows device name gets a
/// `_` after its stem (`CON.txt` → `CON_.txt`); a component over [`MAX_COMPONENT_BYTES`] is cut on
/// a character boundary, keeping its extension.
pub fn sanitize_component(raw: &[u8]) -> Option<String> {
    // Nearly every real name needs no change: check that without allocating more than the result.
    if let Ok(text) = std::str::from_utf8(raw)
        && is_safe_component(text)
        && !matches!(text.as_bytes().last(), Some(b'.' | b' '))
        && !is_reserved(text)
    {
        return Some(text.to_string());
    }
    let lossy = String::from_utf8_lossy(raw);
    let mut s: String = lossy
        .chars()
        .map(|c| if is_forbidden(c) { '_' } else { c })
        .collect();
    trim_trailing_dots_and_spaces(&mut s);
    if s.is_empty() {
        return None;
    }
    if is_reserved(&s) {
        s.insert(s.find('.').unwrap_or(s.len()), '_');
    }
    Some(shorten(&s, "", MAX_COMPONENT_BYTES))
}

/// True when a torrent's `name` leaves nothing to name a file with: empty, `.` or `..` once
/// separators (`/`, `\`) and NULs are removed, which is when libtorrent refuses a single-file
/// torrent. [`sanitize_component`] would still make something of most of these (`/` → `_`).
pub fn is_void_name(raw: &[u8]) -> bool {
    let mut kept = raw.iter().filter(|&&b| !matches!(b, b'/' | b'\\' | 0));
    matches!(
        (kept.next(), kept.next(), kept.next()),
        (None, _, _) | (Some(b'.'), None, _) | (Some(b'.'), Some(b'.'), None)
    )
}

/// True when the part before the first dot is a Windows device name (`CON`, `com1`, `NUL .txt`).
fn is_reserved(name: &str) -> bool {
    // Every reserved name starts with one of these; most names are rejected here at once.
    let starts_like_a_device = name.get(..3).is_some_and(|p| {
        ["CON", "PRN", "AUX", "NUL", "COM", "LPT"]
            .iter()
            .any(|d| d.eq_ignore_ascii_case(p))
    });
    if !starts_like_a_device {
        return false;
    }
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    (3..=4).contains(&stem.len()) && RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem))
}

/// True when `component` is safe to join under a folder: not empty, `.` or `..`, and free of
/// separators, NUL and control characters. Everything [`sanitize_component`] returns passes.
pub fn is_safe_component(component: &str) -> bool {
    !component.is_empty()
        && component != "."
        && component != ".."
        && component.len() <= MAX_COMPONENT_BYTES
        && !has_forbidden_byte(component.as_bytes())
}

/// [`is_forbidden`] on UTF-8 bytes, faster than decoding: the only forbidden characters outside
/// ASCII are the C1 controls U+0080..=U+009F, encoded as `C2 80`..=`C2 9F`.
fn has_forbidden_byte(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| {
        FORBIDDEN_BYTE[usize::from(c)]
            || (c == 0xc2 && b.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)))
    })
}

/// ASCII bytes that [`is_forbidden`] rejects, as a table indexed by byte.
const FORBIDDEN_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = c < 0x20
            || c == 0x7f
            || matches!(
                c as u8,
                b'/' | b'\\' | b'<' | b'>' | b':' | b'"' | b'|' | b'?' | b'*'
            );
        c += 1;
    }
    t
};

/// Splits `name` into stem and extension (with its dot); a leading dot (`.bashrc`) or a long
/// suffix is not an extension.
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 && name.len() - dot <= MAX_EXTENSION_BYTES => name.split_at(dot),
        _ => (name, ""),
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// `name` with `suffix` inserted before its extension, the stem cut so the result fits in `max`
/// bytes.
fn shorten(name: &str, suffix: &str, max: usize) -> String {
    if name.len() + suffix.len() <= max {
        let (stem, ext) = split_extension(name);
        return format!("{stem}{suffix}{ext}");
    }
    let (stem, ext) = split_extension(name);
    let budget = max.saturating_sub(ext.len() + suffix.len());
    let mut out = stem[..floor_char_boundary(stem, budget)].to_string();
    if ext.is_empty() && suffix.is_empty() {
        trim_trailing_dots_and_spaces(&mut out);
    }
    if out.is_empty() {
        out.push('_');
    }
    out.push_str(suffix);
    out.push_str(ext);
    out
}

/// Renames files so that no two share a path and no file sits where another file needs a folder.
///
/// `paths[i]` is skipped when `skip[i]` (padding files are never created). The later of two equal
/// paths, and any file whose path is a folder of another file, gets `.1`, `.2`, … before its
/// extension (`a.txt` → `a.1.txt`). Folders are never renamed, so every file keeps its folder.
pub(crate) fn disambiguate(paths: &mut [Vec<String>], skip: &[bool]) {
    let created = |i: usize| !skip.get(i).copied().unwrap_or(false);
    if !has_conflict(paths, &created) {
        return;
    }
    let mut dirs: BTreeSet<Vec<String>> = BTreeSet::new();
    for (i, p) in paths.iter().enumerate() {
        if created(i) {
            for k in 1..p.len() {
                if !dirs.contains(&p[..k]) {
                    dirs.insert(p[..k].to_vec());
                }
            }
        }
    }
    let mut used: BTreeSet<Vec<String>> = BTreeSet::new();
    // Next number to try for each original path, so many copies of one name cost linear time.
    let mut next: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    for (i, p) in paths.iter_mut().enumerate() {
        if !created(i) {
            continue;
        }
        if used.contains(p) || dirs.contains(p) {
            let Some(last) = p.last().cloned() else {
                continue;
            };
            let counter = next.entry(p.clone()).or_insert(1);
            loop {
                let candidate = shorten(&last, &format!(".{counter}"), MAX_COMPONENT_BYTES);
                *counter += 1;
                if let Some(slot) = p.last_mut() {
                    *slot = candidate;
                }
                if !used.contains(p) && !dirs.contains(p) {
                    break;
                }
            }
        }
        used.insert(p.clone());
    }
}

/// Quick check for the common case of a torrent without collisions, in one sort.
///
/// Sorted component by component, a path comes right before its duplicates and before the paths
/// that use it as a folder (they extend it), so comparing neighbours finds every conflict.
fn has_conflict(paths: &[Vec<String>], created: &impl Fn(usize) -> bool) -> bool {
    let mut sorted: Vec<&[String]> = paths
        .iter()
        .enumerate()
        .filter(|(i, _)| created(*i))
        .map(|(_, p)| p.as_slice())
        .collect();
    sorted.sort_unstable();
    sorted
        .windows(2)
        .any(|w| matches!(w, [a, b] if b.starts_with(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(raw: &str) -> Option<String> {
        sanitize_component(raw.as_bytes())
    }

    #[test]
    fn dot_and_dotdot_and_empty_are_dropped() {
        assert_eq!(s(""), None);
        assert_eq!(s("."), None);
        assert_eq!(s(".."), None);
        assert_eq!(s("..."), None);
        assert_eq!(s(". ."), None);
        assert_eq!(s("..a"), Some("..a".into()));
        assert_eq!(s(".hidden"), Some(".hidden".into()));
    }

    #[test]
    fn separators_nul_and_control_characters_are_replaced() {
        assert_eq!(s("/etc/passwd"), Some("_etc_passwd".into()));
        assert_eq!(s("..\\..\\boot.ini"), Some(".._.._boot.ini".into()));
        assert_eq!(s("a\0b"), Some("a_b".into()));
        assert_eq!(s("a\nb\tc\u{7f}d\u{85}"), Some("a_b_c_d_".into()));
        assert_eq!(s("C:"), Some("C_".into()));
        assert_eq!(s("what?<*>|\""), Some("what______".into()));
    }

    #[test]
    fn windows_reserved_names_and_trailing_dots_or_spaces() {
        assert_eq!(s("CON"), Some("CON_".into()));
        assert_eq!(s("con.txt"), Some("con_.txt".into()));
        assert_eq!(s("nul.tar.gz"), Some("nul_.tar.gz".into()));
        assert_eq!(s("COM1"), Some("COM1_".into()));
        assert_eq!(s("lpt9.log"), Some("lpt9_.log".into()));
        assert_eq!(s("CONSOLE"), Some("CONSOLE".into()));
        assert_eq!(s("file. . "), Some("file".into()));
        assert_eq!(s("dir "), Some("dir".into()));
    }

    #[test]
    fn non_utf8_bytes_are_replaced_not_rejected() {
        assert_eq!(
            sanitize_component(b"caf\xe9.txt"),
            Some("caf\u{fffd}.txt".into())
        );
    }

    #[test]
    fn long_components_are_cut_on_a_char_boundary_keeping_the_extension() {
        let long = format!("{}.mkv", "é".repeat(200));
        let out = s(&long).unwrap();
        assert!(out.len() <= MAX_COMPONENT_BYTES);
        assert!(out.ends_with(".mkv"));
        assert_eq!(out.len(), 254); // 125 two-byte chars + ".mkv"; 255 would split a char.
        let no_ext = "x".repeat(300);
        assert_eq!(s(&no_ext).unwrap().len(), MAX_COMPONENT_BYTES);
        let spaces = format!("{}a", " ".repeat(300));
        assert_eq!(s(&spaces), Some("_".into()));
    }

    fn paths(list: &[&str]) -> Vec<Vec<String>> {
        list.iter()
            .map(|p| p.split('/').map(String::from).collect())
            .collect()
    }

    #[test]
    fn duplicates_get_numbered_before_the_extension() {
        let mut p = paths(&["t/a.txt", "t/a.txt", "t/a.txt", "t/b", "t/b", "t/a.1.txt"]);
        disambiguate(&mut p, &[false; 6]);
        assert_eq!(
            p,
            paths(&[
                "t/a.txt",
                "t/a.1.txt",
                "t/a.2.txt",
                "t/b",
                "t/b.1",
                "t/a.1.1.txt"
            ])
        );
    }

    #[test]
    fn a_file_where_a_folder_is_needed_is_renamed_in_any_order() {
        let mut p = paths(&["t/x", "t/x/y"]);
        disambiguate(&mut p, &[false; 2]);
        assert_eq!(p, paths(&["t/x.1", "t/x/y"]));
        let mut p = paths(&["t/x/y", "t/x"]);
        disambiguate(&mut p, &[false; 2]);
        assert_eq!(p, paths(&["t/x/y", "t/x.1"]));
    }

    #[test]
    fn skipped_padding_files_neither_collide_nor_get_renamed() {
        let mut p = paths(&["t/a", "t/a", "t/a"]);
        disambiguate(&mut p, &[false, true, false]);
        assert_eq!(p, paths(&["t/a", "t/a", "t/a.1"]));
    }

    #[test]
    fn prop_sanitized_components_are_always_safe() {
        fn prop(raw: Vec<u8>, pick: Vec<u8>) -> bool {
            // Bias the input towards the dangerous bytes.
            const NASTY: &[u8] = b"./\\\0\n :?*CONul\xff\xc3";
            let mixed: Vec<u8> = raw
                .iter()
                .zip(pick.iter().chain(std::iter::repeat(&0)))
                .map(|(&b, &p)| {
                    if p % 2 == 0 {
                        NASTY[usize::from(b) % NASTY.len()]
                    } else {
                        b
                    }
                })
                .collect();
            match sanitize_component(&mixed) {
                None => true,
                Some(c) => is_safe_component(&c) && !c.ends_with(['.', ' ']),
            }
        }
        quickcheck::QuickCheck::new()
            .rng(quickcheck::Gen::from_size_and_seed(300, 0x7061_7468))
            .tests(2000)
            .quickcheck(prop as fn(Vec<u8>, Vec<u8>) -> bool);
    }

    #[test]
    fn prop_byte_level_check_agrees_with_the_char_level_one() {
        fn prop(s: String) -> bool {
            has_forbidden_byte(s.as_bytes()) == s.chars().any(is_forbidden)
        }
        quickcheck::QuickCheck::new()
            .rng(quickcheck::Gen::from_size_and_seed(50, 0x6279_7465))
            .tests(3000)
            .quickcheck(prop as fn(String) -> bool);
        assert!(has_forbidden_byte("a\u{85}".as_bytes()));
        assert!(!has_forbidden_byte("é\u{a0}".as_bytes()));
    }

    #[test]
    fn prop_disambiguated_paths_are_unique_and_never_a_folder_of_another() {
        fn prop(names: Vec<(u8, u8, bool)>) -> bool {
            // Few distinct names so collisions are frequent.
            let mut p: Vec<Vec<String>> = names
                .iter()
                .map(|&(a, b, deep)| {
                    let mut v = vec!["t".to_string(), format!("n{}", a % 3)];
                    if deep {
                        v.push(format!("n{}.1", b % 3));
                    }
                    v
                })
                .collect();
            let skip = vec![false; p.len()];
            disambiguate(&mut p, &skip);
            let set: BTreeSet<&Vec<String>> = p.iter().collect();
            let unique = set.len() == p.len();
            let no_file_is_a_dir = p
                .iter()
                .all(|f| (1..f.len()).all(|k| !set.contains(&f[..k].to_vec())));
            unique && no_file_is_a_dir
        }
        quickcheck::QuickCheck::new()
            .rng(quickcheck::Gen::from_size_and_seed(40, 0x6469_7273))
            .tests(1000)
            .quickcheck(prop as fn(Vec<(u8, u8, bool)>) -> bool);
    }
}
