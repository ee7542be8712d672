//! Parse and edit `/etc/passwd` and `/etc/group` text so the container knows the host user.
//!
//! asme runs the process as the host's uid:gid; programs that look up their own name
//! (`whoami`, ssh, git, shells printing a prompt) fail when the image has no such account.
//! This module takes the image's files as text and returns new text with an account for
//! the uid and gid, keeping every original line byte for byte so that nothing the image
//! relies on changes. asme is a static binary and cannot use glibc NSS, so this is its only
//! passwd/group parser.
//!
//! Pure: reading the image's files, bind-mounting the results and creating HOME are left to
//! the callers (`run` and `init`).

/// One parsed `/etc/passwd` line (passwd(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub password: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

/// One parsed `/etc/group` line (group(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub password: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Strips the line end, tolerating CRLF files, and rejects lines that are not entries.
///
/// Comments (`#`) and NIS compat lines (`+`, `-`, see nsswitch.conf(5) `compat`) are never
/// treated as accounts: matching them would hand the user an account that is not real.
fn entry_fields(line: &str, count: usize) -> Option<Vec<&str>> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() || line.starts_with(['#', '+', '-']) {
        return None;
    }
    let fields: Vec<&str> = line.split(':').collect();
    (fields.len() == count && !fields[0].is_empty()).then_some(fields)
}

/// Parses a decimal id; `4294967295` is `(uid_t)-1`, which chown(2) and setreuid(2) read
/// as "no change", so it never names an account.
fn parse_id(field: &str) -> Option<u32> {
    // `u32::from_str` accepts a leading '+', which no passwd writer produces.
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse::<u32>().ok().filter(|&id| id != u32::MAX)
}

impl Entry for PasswdEntry {
    fn parse_line(line: &str) -> Option<PasswdEntry> {
        let f = entry_fields(line, 7)?;
        Some(PasswdEntry {
            name: f[0].to_owned(),
            password: f[1].to_owned(),
            uid: parse_id(f[2])?,
            gid: parse_id(f[3])?,
            gecos: f[4].to_owned(),
            home: f[5].to_owned(),
            shell: f[6].to_owned(),
        })
    }

    fn to_line(&self) -> String {
        let PasswdEntry {
            name,
            password,
            uid,
            gid,
            gecos,
            home,
            shell,
        } = self;
        format!("{name}:{password}:{uid}:{gid}:{gecos}:{home}:{shell}")
    }

    fn key(&self) -> (u32, &str) {
        (self.uid, &self.name)
    }
}

impl Entry for GroupEntry {
    fn parse_line(line: &str) -> Option<GroupEntry> {
        let f = entry_fields(line, 4)?;
        Some(GroupEntry {
            name: f[0].to_owned(),
            password: f[1].to_owned(),
            gid: parse_id(f[2])?,
            members: f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    fn to_line(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.name,
            self.password,
            self.gid,
            self.members.join(",")
        )
    }

    fn key(&self) -> (u32, &str) {
        (self.gid, &self.name)
    }
}

/// The lines of a file, each with its own line end, so rendering gives back the input.
#[derive(Debug, Clone, Default)]
struct RawLines(Vec<String>);

impl RawLines {
    fn parse(text: &str) -> Self {
        RawLines(text.split_inclusive('\n').map(str::to_owned).collect())
    }

    fn push(&mut self, line: String) {
        self.0.push(line + "\n");
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (i, line) in self.0.iter().enumerate() {
            out.push_str(line);
            // Only the input's last line can lack its '\n'; end it before appending more.
            if !line.ends_with('\n') && i + 1 < self.0.len() {
                out.push('\n');
            }
        }
        out
    }
}

/// One entry of an account file: a passwd or a group line.
pub trait Entry: Sized {
    /// Parses one line (a trailing `\n` or `\r\n` is allowed); `None` if it is not an entry.
    fn parse_line(line: &str) -> Option<Self>;
    /// Formats the entry as one line without its line end.
    fn to_line(&self) -> String;
    /// What lookups match: the uid or gid, and the name.
    fn key(&self) -> (u32, &str);
}

/// An account file that keeps every original line verbatim (comments, blank, malformed and
/// NIS `+`/`-` lines) so that editing it is lossless.
#[derive(Debug, Clone)]
pub struct AccountFile<E> {
    lines: RawLines,
    entries: Vec<E>,
}

/// /etc/passwd.
pub type PasswdFile = AccountFile<PasswdEntry>;
/// /etc/group.
pub type GroupFile = AccountFile<GroupEntry>;

impl<E> Default for AccountFile<E> {
    fn default() -> Self {
        AccountFile {
            lines: RawLines::default(),
            entries: Vec::new(),
        }
    }
}

impl<E: Entry> AccountFile<E> {
    /// Parses the text; lines that are not entries are kept but never matched.
    pub fn parse(text: &str) -> Self {
        let lines = RawLines::parse(text);
        let entries = lines.0.iter().filter_map(|l| E::parse_line(l)).collect();
        AccountFile { lines, entries }
    }

    /// The entries in file order.
    pub fn entries(&self) -> impl Iterator<Item = &E> {
        self.entries.iter()
    }

    /// The first entry with this uid or gid, as getpwuid(3) and getgrgid(3) return.
    pub fn by_id(&self, id: u32) -> Option<&E> {
        self.entries.iter().find(|e| e.key().0 == id)
    }

    /// The first entry with this name, as getpwnam(3) and getgrnam(3) return.
    pub fn by_name(&self, name: &str) -> Option<&E> {
        self.entries.iter().find(|e| e.key().1 == name)
    }

    /// Appends an entry as a new last line.
    pub fn push(&mut self, e: E) {
        self.lines.push(e.to_line());
        self.entries.push(e);
    }

    /// The file's text: the original lines unchanged, then the pushed ones.
    pub fn render(&self) -> String {
        self.lines.render()
    }
}

impl PasswdFile {
    /// The first entry with this uid.
    pub fn by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.by_id(uid)
    }

    /// Points the first entry with `uid` at another home folder, rewriting only its line.
    ///
    /// Used when an image's entry names a home its user cannot write (e.g. `/`), so that
    /// everything reading passwd (ssh, `~` in shells, python) agrees with HOME.
    pub fn set_home(&mut self, uid: u32, home: &str) {
        let Some(line) = self
            .lines
            .0
            .iter_mut()
            .find(|l| PasswdEntry::parse_line(l).is_some_and(|e| e.uid == uid))
        else {
            return;
        };
        let mut entry = PasswdEntry::parse_line(line).expect("matched above");
        entry.home = home.to_string();
        let ending = &line[line.trim_end_matches(['\r', '\n']).len()..];
        *line = entry.to_line() + ending;
        if let Some(e) = self.entries.iter_mut().find(|e| e.uid == uid) {
            e.home = home.to_string();
        }
    }
}

impl GroupFile {
    /// The first entry with this gid.
    pub fn by_gid(&self, gid: u32) -> Option<&GroupEntry> {
        self.by_id(gid)
    }

    /// The gids of groups listing `user` as a member, in file order, as initgroups(3) finds.
    pub fn member_gids(&self, user: &str) -> Vec<u32> {
        self.entries
            .iter()
            .filter(|e| e.members.iter().any(|m| m == user))
            .map(|e| e.gid)
            .collect()
    }
}

/// What the caller asks for: the host user's ids and preferred names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountRequest<'a> {
    pub uid: u32,
    pub gid: u32,
    /// Preferred login name (the host user's name); may be invalid or empty.
    pub name: &'a str,
    /// Preferred group name (the host primary group's name); may be empty.
    pub group_name: &'a str,
}

/// The result of [`merge_accounts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    /// New `/etc/passwd` text.
    pub passwd: String,
    /// New `/etc/group` text.
    pub group: String,
    /// The account for the uid; `gid` is always the requested gid.
    pub user: PasswdEntry,
    /// The gid's group entry as it ends up.
    pub group_entry: GroupEntry,
    /// Groups in the merged group file listing `user.name` as a member, sorted, deduped,
    /// without `user.gid`: what initgroups(3) would give the user.
    pub supplementary_gids: Vec<u32>,
    /// The image already had an entry for the uid.
    pub reused_user: bool,
    /// The image already had a group for the gid.
    pub reused_group: bool,
}

/// Whether `name` is a portable login or group name: `[A-Za-z_][A-Za-z0-9_.-]*`, at most
/// 32 bytes.
///
/// POSIX (XBD Definitions, "User Name") asks for the portable filename character set without a
/// leading hyphen; requiring a letter or underscore first also keeps a name from being read
/// as a number or a NIS `+`/`-` line.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    first_ok
        && name.len() <= MAX_NAME
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// useradd's default limit, and the size utmp(5) keeps for a login name.
const MAX_NAME: usize = 32;

/// Picks a free name: the first valid free candidate, else the first valid candidate (or
/// `fallback`) with the smallest free numeric suffix.
fn pick_name(candidates: &[&str], fallback: String, taken: impl Fn(&str) -> bool) -> String {
    if let Some(free) = candidates.iter().find(|c| valid_name(c) && !taken(c)) {
        return (*free).to_owned();
    }
    let base = candidates
        .iter()
        .find(|c| valid_name(c))
        .map_or(fallback, |c| (*c).to_owned());
    if !taken(&base) {
        return base;
    }
    (1u64..)
        .map(|n| {
            // Shorten the base so the suffixed name still fits in MAX_NAME; valid names are
            // ASCII, so any byte index is a char boundary.
            let n = n.to_string();
            format!("{}{n}", &base[..base.len().min(MAX_NAME - n.len())])
        })
        .find(|c| !taken(c))
        .expect("a file has fewer entries than there are suffixes")
}

/// Builds passwd and group text that contain an account for `req.uid` and a group for
/// `req.gid`, reusing the image's own when present.
///
/// `None` stands for a file missing from the image. The original lines are kept byte for
/// byte and in order; new entries are appended, and non-empty output ends with `\n`.
pub fn merge_accounts(
    image_passwd: Option<&str>,
    image_group: Option<&str>,
    req: &AccountRequest,
) -> Accounts {
    let mut passwd = PasswdFile::parse(image_passwd.unwrap_or(""));
    let mut group = GroupFile::parse(image_group.unwrap_or(""));

    let (mut user, reused_user) = match passwd.by_uid(req.uid) {
        Some(e) => (e.clone(), true),
        None => {
            let name = pick_name(&[req.name], format!("user{}", req.uid), |n| {
                passwd.by_name(n).is_some()
            });
            let user = PasswdEntry {
                name: name.clone(),
                password: "x".to_owned(),
                uid: req.uid,
                gid: req.gid,
                gecos: name.clone(),
                home: format!("/home/{name}"),
                shell: "/bin/sh".to_owned(),
            };
            passwd.push(user.clone());
            (user, false)
        }
    };
    // docker runs the process with `--user uid:gid`, so the primary gid is the requested
    // one whatever the reused entry's gid field says; that line itself stays unchanged.
    user.gid = req.gid;

    let (group_entry, reused_group) = match group.by_gid(req.gid) {
        Some(e) => (e.clone(), true),
        None => {
            let name = pick_name(
                &[req.group_name, &user.name],
                format!("group{}", req.gid),
                |n| group.by_name(n).is_some(),
            );
            let entry = GroupEntry {
                name,
                password: "x".to_owned(),
                gid: req.gid,
                members: Vec::new(),
            };
            group.push(entry.clone());
            (entry, false)
        }
    };

    let mut supplementary_gids = group.member_gids(&user.name);
    supplementary_gids.retain(|&g| g != user.gid);
    supplementary_gids.sort_unstable();
    supplementary_gids.dedup();

    Accounts {
        passwd: ensure_final_newline(passwd.render()),
        group: ensure_final_newline(group.render()),
        user,
        group_entry,
        supplementary_gids,
        reused_user,
        reused_group,
    }
}

/// Ends non-empty text with `\n`: when both accounts were reused nothing was appended, and
/// POSIX defines a text line as ending in a newline, so tools that append to the file
/// later (adduser in an entrypoint) would otherwise join their line onto the last one.
fn ensure_final_newline(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_home_rewrites_only_that_line() {
        let text =
            "# c\r\nroot:x:0:0::/root:/bin/sh\r\nd:x:1:1::/usr/sbin:/bin/sh\r\nd2:x:1:1::/:/x";
        let mut file = PasswdFile::parse(text);
        file.set_home(1, "/home/d");
        assert_eq!(
            file.render(),
            "# c\r\nroot:x:0:0::/root:/bin/sh\r\nd:x:1:1::/home/d:/bin/sh\r\nd2:x:1:1::/:/x"
        );
        assert_eq!(file.by_uid(1).unwrap().home, "/home/d");
        file.set_home(77, "/nowhere");
        assert!(!file.render().contains("/nowhere"));
    }

    const IMAGE_PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        node:x:1000:1000::/home/node:/bin/bash\n";
    const IMAGE_GROUP: &str = "root:x:0:\naudio:x:29:node\nnode:x:1000:\n";

    fn req<'a>(uid: u32, gid: u32, name: &'a str, group_name: &'a str) -> AccountRequest<'a> {
        AccountRequest {
            uid,
            gid,
            name,
            group_name,
        }
    }

    #[test]
    fn line_roundtrip() {
        for line in [
            "root:x:0:0:root:/root:/bin/bash",
            "nobody:*:65534:65534:::",
            "a:x:1:2:b,c:/h:",
        ] {
            assert_eq!(PasswdEntry::parse_line(line).unwrap().to_line(), line);
        }
        for line in ["root:x:0:", "audio:x:29:node,alice", "g::4294967294:a"] {
            assert_eq!(GroupEntry::parse_line(line).unwrap().to_line(), line);
        }
        let crlf = PasswdEntry::parse_line("a:x:1:2::/h:/bin/sh\r\n").unwrap();
        assert_eq!(crlf.shell, "/bin/sh");
        let g = GroupEntry::parse_line("g:x:5:a,b\r\n").unwrap();
        assert_eq!(g.members, ["a", "b"]);
    }

    #[test]
    fn parse_line_rejects() {
        for line in [
            "",
            "bad:line",
            "x:x:notanumber:0::/:/bin/sh",
            "x:x:0:notanumber::/:/bin/sh",
            "x:x:4294967295:0::/:/bin/sh",
            "x:x:4294967296:0::/:/bin/sh",
            "x:x:+1:0::/:/bin/sh",
            "x:x: 1:0::/:/bin/sh",
            "x:x:1:0::/:/bin/sh:extra",
            ":x:1:0::/:/bin/sh",
            "#root:x:0:0:root:/root:/bin/bash",
            "+::::::",
            "+nis:x:1:1::/:/bin/sh",
            "-nis:x:1:1::/:/bin/sh",
        ] {
            assert_eq!(PasswdEntry::parse_line(line), None, "{line:?}");
        }
        for line in [
            "",
            "g:x:1",
            "g:x:1::",
            "g:x:x:",
            "g:x:4294967295:",
            "+:::",
            "#g:x:1:",
        ] {
            assert_eq!(GroupEntry::parse_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn valid_names() {
        let (max, over) = ("a".repeat(32), "a".repeat(33));
        for name in ["alice", "Alice.Smith", "_apt", "systemd-journal", "a", &max] {
            assert!(valid_name(name), "{name:?}");
        }
        for name in [
            "", "-alice", "1alice", ".alice", "al ice", "al:ice", "alice$", "élise", &over,
        ] {
            assert!(!valid_name(name), "{name:?}");
        }
    }

    #[test]
    fn render_is_lossless() {
        let texts = [
            "",
            "\n",
            "\n\n",
            "root:x:0:0:root:/root:/bin/bash",
            "root:x:0:0:root:/root:/bin/bash\r\nx\r\n",
            "# comment\n\n+::::::\n-bad\nbad:line\n  spaced : x\n",
            "no newline at end\nlast",
            "audio:x:29:node,,\n\r\n\r",
            "ünïcode:x:1:1::/:/bin/sh\n",
        ];
        for text in texts {
            assert_eq!(PasswdFile::parse(text).render(), text, "{text:?}");
            assert_eq!(GroupFile::parse(text).render(), text, "{text:?}");
        }
    }

    #[test]
    fn file_lookups() {
        let p = PasswdFile::parse("a:x:5:5::/:/bin/sh\nb:x:5:5::/:/bin/sh\n");
        assert_eq!(p.by_uid(5).unwrap().name, "a");
        assert_eq!(p.by_name("b").unwrap().uid, 5);
        assert_eq!(p.entries().count(), 2);
        let g = GroupFile::parse("audio:x:29:node\nvideo:x:44:bob,node\nnode:x:1000:\n");
        assert_eq!(g.by_gid(44).unwrap().name, "video");
        assert_eq!(g.by_name("node").unwrap().gid, 1000);
        assert_eq!(g.member_gids("node"), [29, 44]);
        assert_eq!(g.member_gids("nobody"), Vec::<u32>::new());
    }

    /// One merge scenario: inputs, then the user and group lines expected in the output.
    struct Case<'a> {
        what: &'a str,
        passwd: Option<&'a str>,
        group: Option<&'a str>,
        req: AccountRequest<'a>,
        user_line: &'a str,
        group_line: &'a str,
        reused: (bool, bool),
        supplementary: &'a [u32],
    }

    #[test]
    fn merge_cases() {
        let (long, long1) = ("a".repeat(32), "a".repeat(31) + "1");
        let long_passwd = format!("{long}:x:1:1::/:/bin/sh\n");
        let (long_user, long_group) = (
            format!("{long1}:x:2:2:{long1}:/home/{long1}:/bin/sh"),
            format!("{long1}:x:2:"),
        );
        let cases = [
            Case {
                what: "uid present: image user reused, name and home kept",
                passwd: Some(IMAGE_PASSWD),
                group: Some(IMAGE_GROUP),
                req: req(1000, 1000, "alice", "alice"),
                user_line: "node:x:1000:1000::/home/node:/bin/bash",
                group_line: "node:x:1000:",
                reused: (true, true),
                supplementary: &[29],
            },
            Case {
                what: "name clash: host name taken at another uid",
                passwd: Some(IMAGE_PASSWD),
                group: Some(IMAGE_GROUP),
                req: req(1001, 1001, "node", "node"),
                user_line: "node1:x:1001:1001:node1:/home/node1:/bin/sh",
                group_line: "node1:x:1001:",
                reused: (false, false),
                supplementary: &[],
            },
            Case {
                what: "group clash: group name taken, user name free",
                passwd: Some(IMAGE_PASSWD),
                group: Some(IMAGE_GROUP),
                req: req(1001, 1001, "alice", "audio"),
                user_line: "alice:x:1001:1001:alice:/home/alice:/bin/sh",
                group_line: "alice:x:1001:",
                reused: (false, false),
                supplementary: &[],
            },
            Case {
                what: "group clash: group and user names both taken in group",
                passwd: Some(IMAGE_PASSWD),
                group: Some("staff:x:50:\nalice:x:51:\nstaff1:x:52:\n"),
                req: req(1001, 1001, "alice", "staff"),
                user_line: "alice:x:1001:1001:alice:/home/alice:/bin/sh",
                group_line: "staff2:x:1001:",
                reused: (false, false),
                supplementary: &[],
            },
            Case {
                what: "gid present: group reused under its image name",
                passwd: Some(IMAGE_PASSWD),
                group: Some("root:x:0:\nusers:x:100:alice\nvideo:x:44:alice\n"),
                req: req(1001, 100, "alice", "alice"),
                user_line: "alice:x:1001:100:alice:/home/alice:/bin/sh",
                group_line: "users:x:100:alice",
                reused: (false, true),
                supplementary: &[44],
            },
            Case {
                what: "missing files",
                passwd: None,
                group: None,
                req: req(1000, 1000, "alice", "alice"),
                user_line: "alice:x:1000:1000:alice:/home/alice:/bin/sh",
                group_line: "alice:x:1000:",
                reused: (false, false),
                supplementary: &[],
            },
            Case {
                what: "invalid requested names fall back to user{uid} and group{gid}",
                passwd: None,
                group: None,
                req: req(1234, 5678, "-bad name", ""),
                user_line: "user1234:x:1234:5678:user1234:/home/user1234:/bin/sh",
                group_line: "user1234:x:5678:",
                reused: (false, false),
                supplementary: &[],
            },
            Case {
                what: "empty name, fallback name taken",
                passwd: Some("user7:x:1:1::/:/bin/sh\n"),
                group: Some("user71:x:2:\n"),
                req: req(7, 7, "", ""),
                user_line: "user71:x:7:7:user71:/home/user71:/bin/sh",
                group_line: "user711:x:7:",
                reused: (false, false),
                supplementary: &[],
            },
            Case {
                what: "suffix keeps a 32-byte name within the limit",
                passwd: Some(&long_passwd),
                group: None,
                req: req(2, 2, &long, ""),
                user_line: &long_user,
                group_line: &long_group,
                reused: (false, false),
                supplementary: &[],
            },
        ];
        for c in cases {
            let got = merge_accounts(c.passwd, c.group, &c.req);
            let what = c.what;
            assert!(got.passwd.starts_with(c.passwd.unwrap_or("")), "{what}");
            assert!(got.group.starts_with(c.group.unwrap_or("")), "{what}");
            assert!(
                got.passwd.lines().any(|l| l == c.user_line),
                "{what}: {}",
                got.passwd
            );
            assert!(
                got.group.lines().any(|l| l == c.group_line),
                "{what}: {}",
                got.group
            );
            assert_eq!(got.group_entry.to_line(), c.group_line, "{what}");
            assert_eq!(got.user.uid, c.req.uid, "{what}");
            assert_eq!(got.user.gid, c.req.gid, "{what}");
            assert_eq!((got.reused_user, got.reused_group), c.reused, "{what}");
            assert_eq!(got.supplementary_gids, c.supplementary, "{what}");
            assert!(
                got.passwd.ends_with('\n') && got.group.ends_with('\n'),
                "{what}"
            );
        }
    }

    #[test]
    fn reused_user_runs_with_requested_gid() {
        let got = merge_accounts(
            Some(IMAGE_PASSWD),
            Some(IMAGE_GROUP),
            &req(1000, 29, "", ""),
        );
        assert_eq!(got.passwd, IMAGE_PASSWD, "the reused line is not rewritten");
        assert_eq!(got.user.gid, 29);
        assert_eq!(got.user.home, "/home/node");
        assert_eq!(got.group_entry.name, "audio");
        // audio is now the primary group, so it is not also a supplementary one.
        assert_eq!(got.supplementary_gids, Vec::<u32>::new());
    }

    #[test]
    fn keeps_comments_blank_and_malformed_lines() {
        let passwd = "# image accounts\n\nbad:line\nx:x:notanumber:0::/:/bin/sh\n\
            +::::::\nevil:x:4294967295:0::/:/bin/sh\n";
        let group = "# groups\n\n+:::\nbad\n";
        let got = merge_accounts(Some(passwd), Some(group), &req(0, 0, "root", "root"));
        assert_eq!(
            got.passwd,
            format!("{passwd}root:x:0:0:root:/home/root:/bin/sh\n")
        );
        assert_eq!(got.group, format!("{group}root:x:0:\n"));
        assert!(!got.reused_user && !got.reused_group);
    }

    #[test]
    fn no_trailing_newline() {
        let got = merge_accounts(
            Some("root:x:0:0:root:/root:/bin/sh"),
            Some("root:x:0:"),
            &req(1000, 1000, "alice", "alice"),
        );
        assert_eq!(
            got.passwd,
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:alice:/home/alice:/bin/sh\n"
        );
        assert_eq!(got.group, "root:x:0:\nalice:x:1000:\n");
        // Nothing appended: the newline is still added.
        let got = merge_accounts(
            Some("root:x:0:0::/:/bin/sh"),
            Some("root:x:0:"),
            &req(0, 0, "", ""),
        );
        assert_eq!(
            (got.passwd.as_str(), got.group.as_str()),
            ("root:x:0:0::/:/bin/sh\n", "root:x:0:\n")
        );
        let got = merge_accounts(Some(""), Some(""), &req(0, 0, "root", ""));
        assert_eq!(got.passwd, "root:x:0:0:root:/home/root:/bin/sh\n");
    }

    #[test]
    fn crlf_input() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\r\nnode:x:1000:1000::/home/node:/bin/sh\r\n";
        let group = "root:x:0:\r\nnode:x:1000:\r\nvideo:x:44:node\r\n";
        let got = merge_accounts(Some(passwd), Some(group), &req(1000, 1000, "alice", ""));
        assert_eq!((got.passwd.as_str(), got.group.as_str()), (passwd, group));
        assert_eq!(got.user.name, "node");
        assert_eq!(got.user.shell, "/bin/sh");
        assert_eq!(got.supplementary_gids, [44]);
    }
}
