// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title FedChain: one federated-learning federation per deployment.
/// @notice Learners submit the CIDs of their model updates per round. A committee of
/// aggregators votes on each round's global model: the round closes, and the next one opens,
/// when `quorum` members vote for the same model, server state and included set (a majority,
/// so two different models can never both be accepted). Each round has optional deadlines,
/// enforced with the block timestamp: one for updates (and reveals, in commit-reveal mode),
/// then one for votes, after which anyone may close the round with the previous global model
/// carried over. Events carry the full history (who submitted what, every vote, what was
/// averaged, evaluations, disputes); storage keeps only what a transaction must check, so gas
/// stays flat across rounds and over learners: included sets are bitmaps over learner indices.
/// @dev CIDs are binary CIDs (CIDv0 or CIDv1), at most 63 bytes. Learner `index` is 1-based;
/// its bit in every bitmap is `index - 1` (word `(index - 1) / 256`).
contract FedChain {
    /// @dev Per-learner record. `index` is stable: it survives removal, so a re-added learner
    /// keeps its bit and its history.
    struct Learner {
        bool active;
        uint32 index;
    }

    /// @dev A committee member: valid while `epoch` is the committee's current epoch.
    struct Member {
        uint16 epoch;
        uint8 index; // 1-based; its bit in a vote tally is index - 1
        uint40 voted; // 1 + the round of its last vote on a result in this epoch (0: none)
    }

    /// @notice The run's parameters, fixed at genesis (the plan records the same values).
    /// @param rounds The last round: closing it finishes the federation.
    /// @param updateWindow Seconds a round accepts updates (commitments in commit-reveal mode)
    /// after it opens; 0: no deadline (votes then close submissions).
    /// @param revealWindow Commit-reveal mode when non-zero: seconds after the update deadline
    /// in which committed updates are revealed. Needs an update window.
    /// @param voteWindow Seconds for votes after the updates' (and reveals') deadline; once
    /// past, anyone may close the round with the previous model carried over. 0: no deadline.
    /// @param selectPpm Client sampling: the share of learners in a round, in parts per
    /// million: each round selects exactly ceil(selectPpm * n / 1e6) of the n learner indices
    /// handed out when it opened, by a permutation drawn from its seed. 0 (or 1e6): everyone.
    /// @param bufferSize Asynchronous (FedBuff) rounds: votes may close a round once this many
    /// updates arrived, before the update deadline. 0: every active learner's update.
    /// @param maxStaleness Asynchronous rounds: an update trained for round r is accepted up to
    /// round r + maxStaleness. 0: synchronous rounds.
    struct Params {
        uint32 rounds;
        uint24 updateWindow;
        uint24 revealWindow;
        uint24 voteWindow;
        uint24 selectPpm;
        uint16 bufferSize;
        uint8 maxStaleness;
    }

    /// @dev Hot state read by every round transaction: one slot.
    struct State {
        uint32 round;
        uint32 lastRound;
        uint32 openedAt;
        uint24 updateWindow;
        uint24 revealWindow;
        uint24 voteWindow;
        uint24 selectPpm;
        uint16 bufferSize;
        uint16 epoch;
        uint8 maxStaleness;
        uint8 quorum;
        bool finished;
        uint8 marks; // FROZEN | CURRENT | VOTED | SEATED
    }

    /// @dev A CID packed as: a = length byte followed by the first 31 bytes, b = the next 32.
    struct PackedCid {
        bytes32 a;
        bytes32 b;
    }

    uint256 public constant MAX_CID_LENGTH = 63;
    uint256 public constant MAX_METRICS_LENGTH = 1024;
    /// @dev 2**40 examples: far beyond any learner's data, small enough that FedAvg weights
    /// stay exact and finite in floating point.
    uint256 public constant MAX_EXAMPLES = 1 << 40;
    uint256 public constant MAX_COMMITTEE = 255;
    /// @dev A secure-aggregation message's bytes at most (a revelation: 25 + 53 per learner).
    uint256 private constant MAX_SECAGG_LENGTH = 1 << 20;
    /// @notice selectPpm that selects every learner.
    uint256 public constant ALL = 1_000_000;
    /// @notice The digest a vote to finish the federation carries.
    bytes32 public constant FINISH = keccak256("fedchain.finish");

    /// @dev State.marks: a vote was cast in the open round, so its submissions are final;
    uint8 private constant FROZEN = 1;
    /// which of the two model slots holds the latest global model (the other: the one before);
    uint8 private constant CURRENT = 2;
    /// the latest closed round closed on a vote of the committee (not a timeout, not a void);
    uint8 private constant VOTED = 4;
    /// the committee changed since the latest closed round closed.
    uint8 private constant SEATED = 8;

    /// @dev The tally round under which members approve owner changes (no real round).
    uint256 private constant CHANGES = type(uint256).max;

    /// @notice The account that manages learners and the committee (zero: renounced).
    address public owner;
    uint32 private _learnerCount;
    uint32 private _learnerSlots;
    /// @notice Seconds of block time between the owner announcing a change of the learners or
    /// the committee after genesis (announceChange) and making it; 0: changes take effect at
    /// once. A committee quorum may approve a change sooner (approveChange). Fixed at
    /// deployment (in the owner's slot: the check costs no extra read).
    uint32 public ownerDelay;
    State private _state;
    /// @dev The latest global model and the one before it (see CURRENT), so that voidRound
    /// can restore it.
    PackedCid[2] private _models;
    /// @dev The open round's sampling seed once drawn; until then (pending) the word
    /// (openBlock << 64) | (n << 32) | k, its bits 128..255 zero (a drawn seed has them zero
    /// with probability 2**-128, out of reach like a keccak collision). See _drawSeed.
    bytes32 private _seed;
    bytes private _plan;
    /// @notice The account an ownership transfer in progress goes to; zero when none is.
    address public pendingOwner;
    address[] private _committee;

    mapping(address => Learner) private _learners;
    mapping(address => Member) private _members;
    /// @dev word => bits of the active learners.
    mapping(uint256 => uint256) private _active;
    /// @dev round => word => bits of the learners that submitted / reported in that round.
    mapping(uint256 => mapping(uint256 => uint256)) private _submitted;
    mapping(uint256 => mapping(uint256 => uint256)) private _reported;
    mapping(uint256 => mapping(uint256 => uint256)) private _disputed;
    mapping(uint256 => mapping(address => bytes32)) private _commitments;
    /// @dev keccak(round, epoch, digest) => bits of the members that voted for digest.
    mapping(bytes32 => uint256) private _tally;
    /// @dev keccak256 of an owner call's calldata => when it may run (1: approved by the
    /// committee; 0: not announced).
    mapping(bytes32 => uint256) private _changes;

    error NotOwner(address caller);
    error NotAggregator(address caller);
    error NotLearner(address caller);
    error ZeroAddress();
    error AlreadyLearner(address learner);
    error UnknownLearner(address learner);
    error InvalidCommittee(uint256 size, uint256 quorum);
    error DuplicateMember(address member);
    error InvalidParams(string reason);
    error GenesisAlreadySet();
    error NotStarted();
    error FederationFinished();
    error WrongRound(uint256 given, uint256 open);
    error AlreadySubmitted(uint256 round, address learner);
    error SubmissionsClosed(uint256 round);
    error UpdateDeadlinePassed(uint256 round, uint256 deadline);
    error NotSelected(uint256 round, address learner);
    /// @notice Round `round` opened in this very block: its sampling seed is the hash of this
    /// block, known only once it is sealed. Submit (or commit) in a later block.
    error SeedNotReady(uint256 round);
    error CommitRequired();
    error CommitRevealOff();
    error NoCommitment(uint256 round, address learner);
    error CommitmentMismatch(uint256 round, address learner);
    error RevealNotOpen(uint256 round, uint256 opensAfter);
    error RevealDeadlinePassed(uint256 round, uint256 deadline);
    error BitmapLength(uint256 given, uint256 expected);
    error SubmissionsChanged(uint256 round);
    error NotIncludable(uint256 round, uint256 word, uint256 bits);
    error VotingNotOpen(uint256 round, uint256 opensAfter);
    error VoteDeadlinePassed(uint256 round, uint256 deadline);
    error AlreadyVoted(uint256 round, address member);
    error RoundNotExpired(uint256 round, uint256 deadline);
    error EmptyCid();
    error CidTooLong(uint256 length, uint256 max);
    error NoExamples();
    error TooManyExamples(uint256 given, uint256 max);
    error MetricsTooLarge(uint256 size, uint256 max);
    error NoGlobalModel(uint256 round);
    error AlreadyReported(uint256 round, address learner);
    /// @notice Only the pending owner (see transferOwnership) may accept the ownership.
    error NotPendingOwner(address caller);
    /// @notice Only the latest closed round can be voided.
    error NotLatestRound(uint256 given, uint256 latest);
    /// @notice The round did not close on a committee vote (a timeout, or voided already).
    error NotVoidable(uint256 round);
    /// @notice Voiding a round needs disputes from more than half of the active learners.
    error TooFewDisputes(uint256 round, uint256 disputes, uint256 needed);
    /// @notice `digest` is not the result the round closed on.
    error NotTheResult(uint256 round, bytes32 digest);
    /// @notice After genesis this change of the owner's runs only once announced and
    /// `ownerDelay` seconds have passed (executableAt; 0: not announced) or the committee
    /// approved it.
    error ChangeNotReady(bytes32 change, uint256 executableAt);
    error SecaggMessage(uint256 kind, uint256 length);

    event LearnerAdded(address indexed learner, uint256 index);
    event LearnerRemoved(address indexed learner);
    event CommitteeChanged(uint256 epoch, address[] members, uint256 quorum);
    event GenesisVoted(address indexed member, bytes32 indexed digest);
    event GenesisSet(
        bytes modelCid,
        bytes planCid,
        uint256 rounds,
        uint256 updateWindow,
        uint256 revealWindow,
        uint256 voteWindow,
        uint256 selectPpm,
        uint256 bufferSize,
        uint256 maxStaleness
    );
    /// @notice Round `round`'s sampling seed `seed` was drawn (only when sampling is on): by
    /// the round's first transaction that needs it, in a block after the one the round opened
    /// in (see roundSeed). The seed's low 64 bits are the sample: bits 32..63 the learner
    /// indices n it permutes (those handed out when the round opened), bits 0..31 how many it
    /// selects, ceil(selectPpm*n/1e6).
    event RoundSeeded(uint256 indexed round, bytes32 seed);
    /// @param staleness How many rounds before `round` the update was trained for (0: for it).
    event UpdateSubmitted(
        uint256 indexed round,
        address indexed learner,
        bytes modelCid,
        uint256 numExamples,
        uint256 staleness
    );
    event UpdateCommitted(uint256 indexed round, address indexed learner, bytes32 commitment);
    /// @notice A committee member's vote; `included` is a bitmap over learner indices.
    event Voted(
        uint256 indexed round,
        address indexed member,
        bytes32 indexed digest,
        bytes modelCid,
        bytes stateCid,
        uint256[] included
    );
    /// @notice A committee member could not fetch the submissions in `learners` (a bitmap over
    /// learner indices) of `round` within their deadlines (see reportUnavailable).
    event UnavailableReported(uint256 indexed round, address indexed member, uint256[] learners);
    /// @notice `round` closed on this model. `stateCid` is the server-optimizer state after
    /// the round (empty: none, or unchanged). `included` is a bitmap over learner indices.
    event GlobalModelPublished(
        uint256 indexed round, bytes modelCid, bytes stateCid, uint256[] included
    );
    /// @notice `round` passed its vote deadline without a quorum; `closer` closed it with the
    /// previous global model carried over.
    event RoundTimedOut(uint256 indexed round, address closer);
    /// @notice A learner re-derived `round`'s global model and got `computedCid` instead.
    event Disputed(uint256 indexed round, address indexed learner, bytes computedCid);
    /// @notice More than half of the active learners (`disputes` of them) disputed `round`,
    /// so its result is void: the global model is `restoredCid` again, the one before it, and
    /// the members that voted for the result (`evicted`) lost their seats. The round open at
    /// the time closes carried over on the restored model (its updates were trained on the
    /// void one) and, unless the federation has finished, the next round opens on it.
    event RoundVoided(uint256 indexed round, bytes restoredCid, uint256 disputes, address[] evicted);
    /// @notice A secure-aggregation message (SPEC.md §14): kind 0, a participant's round keys
    /// (and a learner's dealing); kind 1, a committee member's revealed share keys.
    event SecaggPosted(uint256 indexed round, address indexed sender, uint8 kind, bytes data);
    event EvaluationReported(
        uint256 indexed round, address indexed learner, uint256 numExamples, bytes metrics
    );
    event Finished(uint256 lastRound);
    /// @notice The owner offered ownership to `newOwner` (the zero address: offer withdrawn).
    event OwnershipTransferStarted(address indexed previousOwner, address indexed newOwner);
    /// @notice `newOwner` accepted the ownership and is now the owner.
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
    /// @notice The owner announced a change (keccak256 of the call's calldata), which it may
    /// make from `executableAt` (block time) on.
    event ChangeAnnounced(bytes32 indexed change, uint256 executableAt);
    /// @notice A committee quorum approved the owner's `change`: the owner may make it now.
    event ChangeApproved(bytes32 indexed change);
    /// @notice The owner withdrew an announced or approved `change`.
    event ChangeCancelled(bytes32 indexed change);

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    /// @dev The owner's changes of the learners and the committee: at once before genesis (or
    /// without a delay), afterwards only once announced and matured, or approved.
    modifier ownerChange() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        if (ownerDelay != 0 && _state.round != 0) {
            bytes32 change = keccak256(msg.data);
            uint256 at = _changes[change];
            if (at == 0 || block.timestamp < at) revert ChangeNotReady(change, at);
            delete _changes[change];
        }
        _;
    }

    /// @notice Deploys a federation; the deployer becomes the owner.
    /// @param committee The aggregators (at most 255); `quorum` of them must agree on a round.
    /// @param delay ownerDelay: seconds between announcing an owner change after genesis and
    /// making it (0: none).
    constructor(address[] memory committee, uint256 quorum, uint256 delay) {
        if (delay > type(uint32).max) revert InvalidParams("ownerDelay above 2**32-1");
        owner = msg.sender;
        ownerDelay = uint32(delay);
        _setCommittee(committee, quorum);
    }

    // ---------------------------------------------------------------- membership

    /// @notice Owner only: registers learners. Emits LearnerAdded for each.
    function addLearners(address[] calldata learners) external ownerChange {
        uint32 count = _learnerCount;
        uint32 slots = _learnerSlots;
        for (uint256 i = 0; i < learners.length; ++i) {
            address who = learners[i];
            if (who == address(0)) revert ZeroAddress();
            Learner memory l = _learners[who];
            if (l.active) revert AlreadyLearner(who);
            if (l.index == 0) l.index = ++slots;
            l.active = true;
            _learners[who] = l;
            uint256 bit = uint256(l.index) - 1;
            _active[bit >> 8] |= 1 << (bit & 0xff);
            ++count;
            emit LearnerAdded(who, l.index);
        }
        _learnerCount = count;
        _learnerSlots = slots;
    }

    /// @notice Owner only: deregisters a learner. Its past submissions stay on record; an
    /// update it submitted in the open round can no longer be included.
    function removeLearner(address learner) external ownerChange {
        Learner memory l = _learners[learner];
        if (!l.active) revert UnknownLearner(learner);
        _learners[learner].active = false;
        uint256 bit = uint256(l.index) - 1;
        _active[bit >> 8] &= ~(1 << (bit & 0xff));
        unchecked {
            --_learnerCount; // counts the active learners, this one among them
        }
        emit LearnerRemoved(learner);
    }

    /// @notice Owner only: replaces the committee of aggregators. Votes cast before the change
    /// no longer count. `quorum` must be a majority of `members`.
    function setCommittee(address[] calldata members, uint256 quorum) external ownerChange {
        _setCommittee(members, quorum);
    }

    /// @notice Owner only: makes `next` the only aggregator (a committee of one).
    function setAggregator(address next) external ownerChange {
        address[] memory members = new address[](1);
        members[0] = next;
        _setCommittee(members, 1);
    }

    /// @notice Whether `who` is a registered (active) learner.
    function isLearner(address who) external view returns (bool) {
        return _learners[who].active;
    }

    /// @notice Number of registered (active) learners.
    function learnerCount() external view returns (uint256) {
        return _learnerCount;
    }

    /// @notice `who`'s learner index (1-based; 0: never registered).
    function learnerIndex(address who) external view returns (uint256) {
        return _learners[who].index;
    }

    /// @notice Number of learner indices handed out (registered ever).
    function learnerSlots() external view returns (uint256) {
        return _learnerSlots;
    }

    /// @notice The committee's first member (the aggregator, for a committee of one; the zero
    /// address while there is no committee, after a voidRound evicted every member).
    function aggregator() external view returns (address) {
        return _committee.length == 0 ? address(0) : _committee[0];
    }

    /// @notice The committee of aggregators and its quorum.
    function committee() external view returns (address[] memory members, uint256 quorum) {
        return (_committee, _state.quorum);
    }

    /// @notice Whether `who` is a member of the current committee.
    function isAggregator(address who) external view returns (bool) {
        Member memory m = _members[who];
        return m.index != 0 && m.epoch == _state.epoch;
    }

    // ---------------------------------------------------------------- ownership

    /// @notice Owner only: offers ownership to `newOwner`, who takes it with acceptOwnership;
    /// the current owner stays in charge until then. A later call replaces the offer, and
    /// the zero address withdraws it. Emits OwnershipTransferStarted.
    function transferOwnership(address newOwner) external onlyOwner {
        pendingOwner = newOwner;
        emit OwnershipTransferStarted(msg.sender, newOwner);
    }

    /// @notice Owner only: gives the ownership up for good. The learners and the committee can
    /// then change only through voidRound. Emits OwnershipTransferred to the zero address.
    function renounceOwnership() external onlyOwner {
        delete pendingOwner;
        emit OwnershipTransferred(msg.sender, address(0));
        owner = address(0);
    }

    /// @notice Owner only: announces a change of the learners or the committee, the keccak256
    /// of the call's calldata (e.g. removeLearner(x)); the owner may make it `ownerDelay`
    /// seconds of block time later. Emits ChangeAnnounced.
    function announceChange(bytes32 change) external onlyOwner {
        uint256 at = block.timestamp + ownerDelay;
        _changes[change] = at;
        emit ChangeAnnounced(change, at);
    }

    /// @notice Owner only: withdraws an announced or approved change. Emits ChangeCancelled.
    function cancelChange(bytes32 change) external onlyOwner {
        delete _changes[change];
        emit ChangeCancelled(change);
    }

    /// @notice Committee only: approves the owner's `change` (see announceChange); with a
    /// quorum of approvals the owner may make it at once. Emits ChangeApproved then.
    function approveChange(bytes32 change) external {
        State memory s = _state;
        uint256 member = _member(s);
        if (!_vote(s, CHANGES, change, member, false)) return;
        _changes[change] = 1;
        emit ChangeApproved(change);
    }

    /// @notice When the owner may make `change`: 0 not announced, 1 approved by the
    /// committee, else a block timestamp.
    function changeReadyAt(bytes32 change) external view returns (uint256) {
        return _changes[change];
    }

    /// @notice The pending owner only: takes over the ownership offered by transferOwnership.
    /// Emits OwnershipTransferred.
    function acceptOwnership() external {
        address next = pendingOwner;
        if (msg.sender != next) revert NotPendingOwner(msg.sender);
        delete pendingOwner;
        emit OwnershipTransferred(owner, next);
        owner = next;
    }

    // ---------------------------------------------------------------- rounds

    /// @notice Committee only: a vote for the initial model, the run's plan and its parameters.
    /// When `quorum` members voted for the same three, round 1 opens.
    /// @param modelCid CID of the genesis (round 0) global model.
    /// @param planCid CID of the JSON plan (strategy and parameters, rounds, codec version).
    function setGenesis(bytes calldata modelCid, bytes calldata planCid, Params calldata p)
        external
    {
        State memory s = _state;
        uint256 member = _member(s);
        if (s.round != 0) revert GenesisAlreadySet();
        _checkCid(modelCid);
        _checkCid(planCid);
        _checkParams(p);
        bytes32 digest = keccak256(abi.encode(modelCid, planCid, p));
        emit GenesisVoted(msg.sender, digest);
        if (!_vote(s, 0, digest, member, true)) return;
        PackedCid memory genesis = _pack(modelCid);
        _models[0] = genesis;
        _models[1] = genesis; // the slot's first write is paid here, not by a round
        s.marks = 0;
        _plan = planCid;
        s.round = 1;
        s.lastRound = p.rounds;
        s.updateWindow = p.updateWindow;
        s.revealWindow = p.revealWindow;
        s.voteWindow = p.voteWindow;
        s.selectPpm = p.selectPpm;
        s.bufferSize = p.bufferSize;
        s.maxStaleness = p.maxStaleness;
        _open(s, 1);
        emit GenesisSet(
            modelCid,
            planCid,
            p.rounds,
            p.updateWindow,
            p.revealWindow,
            p.voteWindow,
            p.selectPpm,
            p.bufferSize,
            p.maxStaleness
        );
    }

    /// @notice Learners only: submits the CID of this learner's update, once per open round.
    /// @param round The round the update was trained for: the open round, or in asynchronous
    /// mode up to maxStaleness rounds before it.
    /// @param numExamples Number of training examples behind the update (the FedAvg weight).
    function submitUpdate(uint256 round, bytes calldata modelCid, uint256 numExamples) external {
        State memory s = _state;
        uint256 index = _learnerIndex();
        _checkAccepting(s);
        if (s.revealWindow != 0) revert CommitRequired();
        uint256 open = s.round;
        if (round > open || open - round > s.maxStaleness) revert WrongRound(round, open);
        _checkCid(modelCid);
        _checkExamples(numExamples);
        if (s.selectPpm != 0 && !_selected(_seedNow(open), index)) {
            revert NotSelected(open, msg.sender);
        }
        if (!_testAndSet(_submitted[open], index)) revert AlreadySubmitted(open, msg.sender);
        emit UpdateSubmitted(open, msg.sender, modelCid, numExamples, open - round);
    }

    /// @notice Commit-reveal mode, learners only, before the update deadline: commits to
    /// keccak256(abi.encode(learner, round, modelCid, numExamples, salt)).
    function commitUpdate(uint256 round, bytes32 commitment) external {
        State memory s = _state;
        uint256 index = _learnerIndex();
        _checkAccepting(s);
        if (s.revealWindow == 0) revert CommitRevealOff();
        if (round != s.round) revert WrongRound(round, s.round);
        if (s.selectPpm != 0 && !_selected(_seedNow(round), index)) {
            revert NotSelected(round, msg.sender);
        }
        if (commitment == 0 || _commitments[round][msg.sender] != 0) {
            revert AlreadySubmitted(round, msg.sender);
        }
        _commitments[round][msg.sender] = commitment;
        emit UpdateCommitted(round, msg.sender, commitment);
    }

    /// @notice Commit-reveal mode, learners only, between the update and reveal deadlines:
    /// reveals the committed update, which then counts as submitted.
    function revealUpdate(uint256 round, bytes calldata modelCid, uint256 numExamples, bytes32 salt)
        external
    {
        State memory s = _state;
        uint256 index = _learnerIndex();
        if (s.round == 0) revert NotStarted();
        if (s.finished) revert FederationFinished();
        if (s.revealWindow == 0) revert CommitRevealOff();
        if (round != s.round) revert WrongRound(round, s.round);
        if (s.marks & FROZEN != 0) revert SubmissionsClosed(round);
        uint256 opens = uint256(s.openedAt) + s.updateWindow;
        if (block.timestamp <= opens) revert RevealNotOpen(round, opens);
        if (block.timestamp > opens + s.revealWindow) {
            revert RevealDeadlinePassed(round, opens + s.revealWindow);
        }
        bytes32 c = _commitments[round][msg.sender];
        if (c == 0) revert NoCommitment(round, msg.sender);
        if (keccak256(abi.encode(msg.sender, round, modelCid, numExamples, salt)) != c) {
            revert CommitmentMismatch(round, msg.sender);
        }
        _checkCid(modelCid);
        _checkExamples(numExamples);
        if (!_testAndSet(_submitted[round], index)) revert AlreadySubmitted(round, msg.sender);
        emit UpdateSubmitted(round, msg.sender, modelCid, numExamples, 0);
    }

    /// @notice Anyone, with sampling on, in a block after the open round's opening: draws its
    /// seed now if still pending (as its first submission would; see roundSeed). The seed
    /// then stays the one drawn from the opening block's hash even if the first submission
    /// comes more than 256 blocks later (past them blockhash no longer reaches that block).
    /// Does nothing once drawn.
    function seedRound(uint256 round) external {
        State memory s = _state;
        if (s.round == 0) revert NotStarted();
        if (s.finished) revert FederationFinished();
        if (round != s.round) revert WrongRound(round, s.round);
        if (s.selectPpm != 0) _seedNow(round);
    }

    /// @notice Committee only: a vote for the open round's global model. When `quorum` members
    /// voted for the same model, state and included set, the round closes and the next opens.
    /// @param stateCid The server-optimizer state after the round (empty: none).
    /// @param included Bitmap (over learner indices) of the updates averaged; each must have
    /// been submitted in `round` by a learner still registered. May be all zero when a round
    /// closes without usable updates (then the model is carried over).
    /// @param seen The round's submissions as the voter read them: must equal the chain's, so
    /// a vote always accounts for every submission. Both bitmaps have one word per 256
    /// learner indices handed out.
    function publishGlobal(
        uint256 round,
        bytes calldata modelCid,
        bytes calldata stateCid,
        uint256[] calldata included,
        uint256[] calldata seen
    ) external {
        State memory s = _state;
        uint256 member = _member(s);
        _checkOpen(s, round);
        _checkCid(modelCid);
        if (stateCid.length > MAX_CID_LENGTH) {
            revert CidTooLong(stateCid.length, MAX_CID_LENGTH);
        }
        uint256 arrived = _checkIncluded(round, included, seen);
        uint256 updateEnd = _updateEnd(s);
        if (s.updateWindow != 0 && block.timestamp <= updateEnd) {
            // Before the deadline a vote would cut the round short: only once every active
            // learner (with sampling, the whole sample; asynchronously, the buffer) is in.
            uint256 needed = s.bufferSize != 0
                ? s.bufferSize
                : (s.selectPpm != 0 ? uint32(uint256(_seed)) : _learnerCount);
            if (arrived < needed) revert VotingNotOpen(round, updateEnd);
        }
        if (s.voteWindow != 0 && block.timestamp > updateEnd + s.voteWindow) {
            revert VoteDeadlinePassed(round, updateEnd + s.voteWindow);
        }
        bytes32 digest = keccak256(abi.encode(modelCid, stateCid, included));
        emit Voted(round, msg.sender, digest, modelCid, stateCid, included);
        if (!_vote(s, round, digest, member, true)) {
            if (s.marks & FROZEN == 0) _state.marks = s.marks | FROZEN;
            return;
        }
        uint8 next = (s.marks & CURRENT) ^ CURRENT;
        _models[next >> 1] = _pack(modelCid);
        s.marks = next | VOTED;
        emit GlobalModelPublished(round, modelCid, stateCid, included);
        _close(s);
    }

    /// @notice Committee only: records that this member could not fetch the open round's
    /// submissions in `learners` (a bitmap over learner indices, each one submitted in the
    /// round) within their fetch deadlines (SPEC.md §7.4), before it votes without them. The
    /// evidence that excuses a left-out update: a submission every member whose vote closed
    /// the round reported unavailable is treated as unavailable by the learners' and the
    /// audit's re-derivation. May be sent more than once; the reports of a round add up.
    function reportUnavailable(uint256 round, uint256[] calldata learners) external {
        State memory s = _state;
        _member(s);
        _checkOpen(s, round);
        uint256 words = _words();
        if (learners.length != words) revert BitmapLength(learners.length, words);
        mapping(uint256 => uint256) storage submitted = _submitted[round];
        for (uint256 w = 0; w < words; ++w) {
            uint256 bad = learners[w] & ~submitted[w];
            if (bad != 0) revert NotIncludable(round, w, bad);
        }
        emit UnavailableReported(round, msg.sender, learners);
    }

    /// @notice Secure aggregation (SPEC.md §14), in the open round. Kind 0 (KEYS), learners
    /// and committee members, by the update deadline: the sender's round keys, 64 bytes (pk,
    /// commitment), a learner's followed by its dealing of encrypted shares. Kind 1 (REVEAL),
    /// committee members: the share keys the member reveals once the round's updates are in.
    /// Only emitted: which messages count (the key deadline, when revelations may come, the
    /// first of each sender) is the round rule's, from the events and their blocks'
    /// timestamps. With sampling on, the first KEYS message draws the round's seed.
    function postSecagg(uint256 round, uint8 kind, bytes calldata data) external {
        State memory s = _state;
        _checkOpen(s, round);
        if (kind != 0) {
            _member(s);
        } else {
            if (!_learners[msg.sender].active) _member(s);
            uint256 deadline = uint256(s.openedAt) + s.updateWindow;
            if (s.updateWindow != 0 && block.timestamp > deadline) {
                revert UpdateDeadlinePassed(round, deadline);
            }
            if (s.selectPpm != 0) _seedNow(round);
        }
        if (kind > 1 || data.length > MAX_SECAGG_LENGTH) revert SecaggMessage(kind, data.length);
        emit SecaggPosted(round, msg.sender, kind, data);
    }

    /// @notice Anyone, once the open round's vote deadline has passed without a quorum:
    /// closes it with the previous global model carried over, so the federation moves on.
    function closeRound(uint256 round) external {
        State memory s = _state;
        _checkOpen(s, round);
        uint256 deadline = s.voteWindow == 0 ? 0 : _updateEnd(s) + s.voteWindow;
        if (deadline == 0 || block.timestamp <= deadline) revert RoundNotExpired(round, deadline);
        emit RoundTimedOut(round, msg.sender);
        emit GlobalModelPublished(round, _unpack(_models[(s.marks & CURRENT) >> 1]), "",
            new uint256[](0));
        s.marks &= CURRENT;
        _close(s);
    }

    /// @notice Learners only: records that this learner re-derived `round`'s global model from
    /// the chain and the store and got `computedCid`, not the published one. Counted once per
    /// learner and round (see disputeCount; a second dispute is recorded, not counted).
    function dispute(uint256 round, bytes calldata computedCid) external {
        uint256 index = _learnerIndex();
        if (round == 0 || round >= _state.round) revert NoGlobalModel(round);
        _checkCid(computedCid);
        _testAndSet(_disputed[round], index);
        emit Disputed(round, msg.sender, computedCid);
    }

    /// @notice Anyone, once more than half of the active learners disputed the latest closed
    /// round: voids its result. The global model becomes the one before it again; the members
    /// that voted for the result lose their seats (a new committee epoch of the others, its
    /// quorum a majority of them; none left: no committee until the owner names one, and
    /// rounds close only past their vote deadlines); the open round closes carried over on
    /// the restored model and the next one opens (after the last round: the federation ends
    /// on the restored model). Emits RoundVoided.
    /// @param digest The result the round closed on, keccak256(abi.encode(modelCid, stateCid,
    /// included)) of its GlobalModelPublished event (see votes).
    function voidRound(uint256 round, bytes32 digest) external {
        State memory s = _state;
        if (s.round == 0) revert NotStarted();
        if (round == 0 || round + 1 != s.round) revert NotLatestRound(round, s.round - 1);
        if (s.marks & VOTED == 0) revert NotVoidable(round);
        uint256 disputes = _disputeCount(round);
        uint256 learners = _learnerCount;
        if (2 * disputes <= learners) revert TooFewDisputes(round, disputes, learners / 2 + 1);
        address[] memory evicted;
        if (s.marks & SEATED == 0) {
            // The committee that closed the round is still seated: its voters lose their seats.
            uint256 voters = 1; // a committee of one: its only member
            if (s.quorum != 1) {
                voters = _tally[keccak256(abi.encode(round, s.epoch, digest))];
                if (_popcount(voters) < s.quorum) revert NotTheResult(round, digest);
            }
            evicted = _evict(voters);
            s.epoch = _state.epoch;
            s.quorum = _state.quorum;
        }
        uint8 restored = (s.marks & CURRENT) ^ CURRENT; // the slot of the model before it
        s.marks = restored | SEATED; // no longer voidable; nobody left to evict
        bytes memory model = _unpack(_models[restored >> 1]);
        emit RoundVoided(round, model, disputes, evicted);
        if (s.finished) {
            _state = s;
            return;
        }
        emit GlobalModelPublished(s.round, model, "", new uint256[](0));
        s.marks = restored;
        _close(s);
    }

    /// @notice Learners only, once per round: reports the evaluation of `round`'s global model.
    /// @param metrics A small JSON object (at most 1 KiB), e.g. {"loss":0.31,"accuracy":0.9}.
    function reportEvaluation(uint256 round, uint256 numExamples, bytes calldata metrics)
        external
    {
        uint256 index = _learnerIndex();
        if (round == 0 || round >= _state.round) revert NoGlobalModel(round);
        _checkExamples(numExamples);
        if (metrics.length > MAX_METRICS_LENGTH) {
            revert MetricsTooLarge(metrics.length, MAX_METRICS_LENGTH);
        }
        if (!_testAndSet(_reported[round], index)) revert AlreadyReported(round, msg.sender);
        emit EvaluationReported(round, msg.sender, numExamples, metrics);
    }

    /// @notice Committee only: a vote to end the federation now (closing the last round ends
    /// it on its own); with `quorum` votes, no submissions or global models after it.
    function finish() external {
        State memory s = _state;
        uint256 member = _member(s);
        if (s.round == 0) revert NotStarted();
        if (s.finished) revert FederationFinished();
        emit Voted(s.round, msg.sender, FINISH, "", "", new uint256[](0));
        if (!_vote(s, s.round, FINISH, member, false)) return;
        _state.finished = true;
        unchecked {
            emit Finished(s.round - 1); // s.round >= 1 here
        }
    }

    // ---------------------------------------------------------------- views

    /// @notice 0 before genesis, else the round open for updates (after finish: one past the last).
    function currentRound() external view returns (uint256) {
        return _state.round;
    }

    /// @notice Whether the federation has finished.
    function finished() external view returns (bool) {
        return _state.finished;
    }

    /// @notice The open round's timing: when it opened, its update deadline (commitments in
    /// commit-reveal mode), reveal deadline and vote deadline (0: none), and whether a vote
    /// has closed its submissions.
    function roundInfo()
        external
        view
        returns (
            uint256 round,
            uint256 openedAt,
            uint256 updateDeadline,
            uint256 revealDeadline,
            uint256 voteDeadline,
            bool frozen
        )
    {
        State memory s = _state;
        uint256 u = s.updateWindow == 0 ? 0 : uint256(s.openedAt) + s.updateWindow;
        uint256 r = s.revealWindow == 0 ? u : u + s.revealWindow;
        uint256 v = s.voteWindow == 0 ? 0 : _updateEnd(s) + s.voteWindow;
        return (s.round, s.openedAt, u, r, v, s.marks & FROZEN != 0);
    }

    /// @notice The parameters fixed at genesis.
    function params() external view returns (Params memory p) {
        State memory s = _state;
        p.rounds = s.lastRound;
        p.updateWindow = s.updateWindow;
        p.revealWindow = s.revealWindow;
        p.voteWindow = s.voteWindow;
        p.selectPpm = s.selectPpm;
        p.bufferSize = s.bufferSize;
        p.maxStaleness = s.maxStaleness;
    }

    /// @notice CID of the run's JSON plan (empty before genesis).
    function plan() external view returns (bytes memory) {
        return _plan;
    }

    /// @notice The last closed round (0: genesis) and its global model's CID (empty before
    /// genesis). Earlier rounds' models are in the GenesisSet/GlobalModelPublished events.
    function latestGlobal() external view returns (uint256 round, bytes memory modelCid) {
        uint256 open = _state.round;
        return (open == 0 ? 0 : open - 1, _unpack(_models[(_state.marks & CURRENT) >> 1]));
    }

    /// @notice The open round's sampling seed (zero when sampling is off): the one drawn (see
    /// RoundSeeded), or else the one a transaction in the call's block would draw,
    /// keccak256(abi.encode(blockhash(anchor), address(this), round)) with its low 64 bits
    /// replaced by the sample, anchor the block the round opened in (or, past 256 blocks,
    /// the latest block openBlock + 256*j before the call's). Called in the opening block
    /// itself, where the seed cannot be known yet, it returns the pending word: bits
    /// 128..255 zero, bits 64..127 the opening block, bits 0..63 the sample.
    function roundSeed() external view returns (bytes32) {
        if (_state.selectPpm == 0) return 0;
        bytes32 stored = _seed;
        bytes32 seed = _drawSeed(stored, _state.round);
        return seed == 0 ? stored : seed;
    }

    /// @notice The block the open round opened in while its seed is not drawn yet (the seed
    /// then comes from that block's hash, see roundSeed); 0 once drawn, or without sampling.
    function seedBlock() external view returns (uint256) {
        uint256 stored = uint256(_seed);
        return _state.selectPpm == 0 || stored >> 128 != 0 ? 0 : stored >> 64;
    }

    /// @notice Whether `learner` is selected for the open round (always, without sampling),
    /// by roundSeed; reverts SeedNotReady when called in the round's opening block.
    function isSelected(address learner) external view returns (bool) {
        uint256 index = _learners[learner].index;
        if (index == 0) return false;
        if (_state.selectPpm == 0) return true;
        bytes32 seed = _drawSeed(_seed, _state.round);
        if (seed == 0) revert SeedNotReady(_state.round);
        return _selected(seed, index);
    }

    /// @notice Learner `index`'s place in the permutation a round's `seed` draws: it is
    /// selected iff the place is below the seed's sample size (the low 32 bits). Constant gas:
    /// four Feistel rounds over keccak256 on the smallest 4**h >= n, walking the cycle until
    /// the value falls below n (on average fewer than 4 walks). An index outside 1..n (the
    /// seed's bits 32..63) has no place: type(uint256).max.
    function samplePosition(bytes32 seed, uint256 index) external pure returns (uint256) {
        uint256 n = uint32(uint256(seed) >> 32);
        if (index == 0 || index > n) return type(uint256).max;
        return _permute(seed, index - 1, n);
    }

    /// @notice Bitmap of the learners that submitted in `round` (one word per 256 indices).
    function submittedBits(uint256 round) external view returns (uint256[] memory bits) {
        bits = new uint256[](_words());
        for (uint256 w = 0; w < bits.length; ++w) {
            bits[w] = _submitted[round][w];
        }
    }

    /// @notice Bitmap of the active learners (one word per 256 indices).
    function activeBits() external view returns (uint256[] memory bits) {
        bits = new uint256[](_words());
        for (uint256 w = 0; w < bits.length; ++w) {
            bits[w] = _active[w];
        }
    }

    /// @notice How many current committee members voted `digest` in `round` (0: genesis); a
    /// round's result keeps its tally after the close (voidRound reads it) while the
    /// committee is unchanged. A committee of one keeps no tally.
    function votes(uint256 round, bytes32 digest) external view returns (uint256) {
        return _popcount(_tally[keccak256(abi.encode(round, _state.epoch, digest))]);
    }

    /// @notice Whether `learner` submitted an update in `round`.
    function hasSubmitted(uint256 round, address learner) external view returns (bool) {
        return _isSet(_submitted[round], _learners[learner].index);
    }

    /// @notice `learner`'s commitment in `round` (commit-reveal mode; zero: none).
    function commitment(uint256 round, address learner) external view returns (bytes32) {
        return _commitments[round][learner];
    }

    /// @notice How many of the active learners disputed `round` (voidRound needs more than
    /// half of learnerCount).
    function disputeCount(uint256 round) external view returns (uint256) {
        return _disputeCount(round);
    }

    /// @notice Whether `learner` disputed `round`.
    function hasDisputed(uint256 round, address learner) external view returns (bool) {
        return _isSet(_disputed[round], _learners[learner].index);
    }

    /// @notice Whether `learner` reported an evaluation of `round`'s global model.
    function hasReported(uint256 round, address learner) external view returns (bool) {
        return _isSet(_reported[round], _learners[learner].index);
    }

    // ---------------------------------------------------------------- internals

    function _setCommittee(address[] memory members, uint256 quorum) private {
        uint256 n = members.length;
        if (n == 0 || n > MAX_COMMITTEE || quorum == 0 || quorum > n || 2 * quorum <= n) {
            revert InvalidCommittee(n, quorum);
        }
        uint16 epoch = _state.epoch + 1;
        for (uint256 i = 0; i < n; ++i) {
            address who = members[i];
            if (who == address(0)) revert ZeroAddress();
            if (_members[who].epoch == epoch) revert DuplicateMember(who);
            _members[who] = Member(epoch, uint8(i + 1), 0);
        }
        _committee = members;
        _state.epoch = epoch;
        _state.quorum = uint8(quorum);
        _state.marks |= SEATED;
        emit CommitteeChanged(epoch, members, quorum);
    }

    /// @dev Seats a new committee epoch without the members whose bits are set in `voters`,
    /// its quorum a majority of the rest (none left: an empty committee, quorum 0, which no
    /// vote can reach until the owner names one); returns the members removed.
    function _evict(uint256 voters) private returns (address[] memory evicted) {
        address[] memory members = _committee;
        uint256 n = members.length;
        uint256 gone = _popcount(voters);
        address[] memory kept = new address[](n - gone);
        evicted = new address[](gone);
        uint256 k;
        uint256 e;
        for (uint256 i = 0; i < n; ++i) {
            if (voters & (1 << i) != 0) evicted[e++] = members[i];
            else kept[k++] = members[i];
        }
        if (k != 0) {
            _setCommittee(kept, k / 2 + 1);
            return evicted;
        }
        uint16 epoch = _state.epoch + 1;
        delete _committee;
        _state.epoch = epoch;
        _state.quorum = 0;
        emit CommitteeChanged(epoch, kept, 0);
    }

    function _disputeCount(uint256 round) private view returns (uint256 count) {
        mapping(uint256 => uint256) storage disputed = _disputed[round];
        uint256 words = _words();
        for (uint256 w = 0; w < words; ++w) {
            count += _popcount(disputed[w] & _active[w]);
        }
    }

    /// @dev The sender's committee index; reverts with NotAggregator unless it is a member.
    function _member(State memory s) private view returns (uint256) {
        Member memory m = _members[msg.sender];
        if (m.index == 0 || m.epoch != s.epoch) revert NotAggregator(msg.sender);
        return m.index;
    }

    /// @dev Records `member`'s vote for `digest`; true when it completes the quorum (the
    /// closing vote is not stored). A committee of one decides alone. With `once` (a vote on
    /// the genesis or a round's result) a member votes once per round: a second vote, for
    /// another digest too, reverts with AlreadyVoted, so nobody can vote for two results.
    function _vote(State memory s, uint256 round, bytes32 digest, uint256 member, bool once)
        private
        returns (bool)
    {
        if (s.quorum == 1) return true;
        Member storage m = _members[msg.sender];
        uint40 mark = once ? uint40(round + 1) : 0; // once: round is a round (< 2**32)
        if (once && m.voted == mark) revert AlreadyVoted(round, msg.sender);
        bytes32 key = keccak256(abi.encode(round, s.epoch, digest));
        uint256 bits = _tally[key];
        uint256 bit = 1 << (member - 1);
        if (bits & bit != 0) revert AlreadyVoted(round, msg.sender);
        bits |= bit;
        _tally[key] = bits; // the closing vote's too: voidRound finds the result's voters
        if (_popcount(bits) >= s.quorum) return true;
        if (once) m.voted = mark;
        return false;
    }

    /// @dev Closes the open round: finishes after the last one, else opens the next.
    function _close(State memory s) private {
        uint256 round = s.round;
        if (round >= s.lastRound) {
            s.round = uint32(round + 1);
            s.finished = true;
            _state = s;
            emit Finished(round);
            return;
        }
        _open(s, round + 1);
    }

    function _open(State memory s, uint256 round) private {
        s.round = uint32(round);
        s.openedAt = uint32(block.timestamp);
        s.marks &= ~FROZEN;
        _state = s;
        if (s.selectPpm != 0) {
            // The sample is fixed when the round opens: the indices handed out by then, and
            // ceil(selectPpm * n / 1e6) of them; both ride in the seed's low 64 bits. Its
            // randomness is this block's hash, which nobody sending this transaction can know:
            // the seed stays pending (this block's number kept) until a later block draws it.
            uint256 n = _learnerSlots;
            uint256 k = (uint256(s.selectPpm) * n + ALL - 1) / ALL;
            _seed = bytes32((block.number << 64) | (n << 32) | k);
        }
    }

    /// @dev The open round's seed for a transaction of this block: drawn now (stored, and
    /// RoundSeeded emitted) if it was pending; SeedNotReady in the round's opening block.
    function _seedNow(uint256 round) private returns (bytes32 seed) {
        seed = _seed;
        if (uint256(seed) >> 128 == 0) {
            seed = _drawSeed(seed, round);
            if (seed == 0) revert SeedNotReady(round);
            _seed = seed;
            emit RoundSeeded(round, seed);
        }
    }

    /// @dev The seed `stored` stands for in this block: itself once drawn; if pending,
    /// keccak256(abi.encode(blockhash(anchor), address(this), round)) with the pending low
    /// 64 bits (the sample), anchor = openBlock + 256 * floor((block.number - 1 - openBlock)
    /// / 256): the opening block up to 256 blocks after it, then the latest multiple of 256
    /// blocks after it (blockhash reaches back 256 blocks only). 0 in the opening block.
    function _drawSeed(bytes32 stored, uint256 round) private view returns (bytes32) {
        uint256 w = uint256(stored);
        if (w >> 128 != 0) return stored;
        uint256 opened = w >> 64;
        if (block.number <= opened) return 0;
        uint256 anchor = opened + ((block.number - 1 - opened) & ~uint256(255));
        uint256 x = uint256(keccak256(abi.encode(blockhash(anchor), address(this), round)));
        return bytes32(((x >> 64) << 64) | uint64(w));
    }

    /// @dev Checks a vote's bitmaps against the chain; returns how many active learners
    /// submitted in the round.
    function _checkIncluded(uint256 round, uint256[] calldata included, uint256[] calldata seen)
        private
        view
        returns (uint256 arrived)
    {
        uint256 words = _words();
        if (included.length != words) revert BitmapLength(included.length, words);
        if (seen.length != words) revert BitmapLength(seen.length, words);
        mapping(uint256 => uint256) storage submitted = _submitted[round];
        for (uint256 w = 0; w < words; ++w) {
            uint256 sub = submitted[w];
            if (seen[w] != sub) revert SubmissionsChanged(round);
            uint256 usable = sub & _active[w];
            uint256 bad = included[w] & ~usable;
            if (bad != 0) revert NotIncludable(round, w, bad);
            arrived += _popcount(usable);
        }
    }

    function _checkParams(Params calldata p) private pure {
        if (p.rounds == 0) revert InvalidParams("rounds must be at least 1");
        if (p.selectPpm > ALL) revert InvalidParams("selectPpm above 1e6");
        if (p.revealWindow != 0 && p.updateWindow == 0) {
            revert InvalidParams("commit-reveal needs an update window");
        }
        if (p.revealWindow != 0 && p.maxStaleness != 0) {
            revert InvalidParams("commit-reveal rounds are synchronous");
        }
    }

    /// @dev Updates are accepted: started, not finished, no vote yet, before the deadline.
    function _checkAccepting(State memory s) private view {
        if (s.round == 0) revert NotStarted();
        if (s.finished) revert FederationFinished();
        if (s.marks & FROZEN != 0) revert SubmissionsClosed(s.round);
        if (s.updateWindow != 0 && block.timestamp > uint256(s.openedAt) + s.updateWindow) {
            revert UpdateDeadlinePassed(s.round, uint256(s.openedAt) + s.updateWindow);
        }
    }

    /// @dev When updates (and reveals) stop: the moment the vote window starts.
    function _updateEnd(State memory s) private pure returns (uint256) {
        if (s.updateWindow == 0) return s.openedAt;
        return uint256(s.openedAt) + s.updateWindow + s.revealWindow;
    }

    /// @dev Whether learner `index` is in the sample of `seed` (see samplePosition).
    function _selected(bytes32 seed, uint256 index) private pure returns (bool) {
        uint256 n = uint32(uint256(seed) >> 32);
        if (index == 0 || index > n) return false;
        uint256 k = uint32(uint256(seed));
        return k >= n || _permute(seed, index - 1, n) < k;
    }

    /// @dev A pseudorandom permutation of 0..n-1 keyed by `seed` (1 <= n <= 2**32): a
    /// balanced Feistel network of four rounds on 2h bits, 4**h the smallest power of four
    /// >= n, round i's function keccak256(seed, i << 32 | right half) mod 2**h; values >= n
    /// walk the cycle on. fedchain.protocol.rules.sample_position mirrors it.
    function _permute(bytes32 seed, uint256 x, uint256 n) private pure returns (uint256) {
        uint256 h = 1;
        while (1 << (2 * h) < n) ++h;
        uint256 mask = (1 << h) - 1;
        assembly ("memory-safe") {
            mstore(0, seed)
            for {} 1 {} {
                let l := shr(h, x)
                let r := and(x, mask)
                for { let i := 0 } lt(i, 4) { i := add(i, 1) } {
                    mstore(32, or(shl(32, i), r))
                    let f := and(keccak256(0, 64), mask)
                    let t := r
                    r := xor(l, f)
                    l := t
                }
                x := or(shl(h, l), r)
                if lt(x, n) { break }
            }
        }
        return x;
    }

    function _words() private view returns (uint256) {
        return (uint256(_learnerSlots) + 255) >> 8;
    }

    /// @dev The sender's learner index; reverts with NotLearner unless it is an active learner.
    function _learnerIndex() private view returns (uint256) {
        Learner memory l = _learners[msg.sender];
        if (!l.active) revert NotLearner(msg.sender);
        return l.index;
    }

    /// @dev Sets learner `index`'s bit in a round's bitmap; false if it was set already.
    function _testAndSet(mapping(uint256 => uint256) storage bitmap, uint256 index)
        private
        returns (bool)
    {
        uint256 b = index - 1;
        uint256 word = b >> 8;
        uint256 bit = 1 << (b & 0xff);
        uint256 bits = bitmap[word];
        if (bits & bit != 0) return false;
        bitmap[word] = bits | bit;
        return true;
    }

    /// @dev Whether learner `index`'s bit is set in a round's bitmap (index 0: no learner).
    function _isSet(mapping(uint256 => uint256) storage bitmap, uint256 index)
        private
        view
        returns (bool)
    {
        if (index == 0) return false;
        uint256 b = index - 1;
        return bitmap[b >> 8] & (1 << (b & 0xff)) != 0;
    }

    function _popcount(uint256 x) private pure returns (uint256 n) {
        unchecked {
            x = x - ((x >> 1) & 0x5555555555555555555555555555555555555555555555555555555555555555);
            x = (x & 0x3333333333333333333333333333333333333333333333333333333333333333)
                + ((x >> 2) & 0x3333333333333333333333333333333333333333333333333333333333333333);
            x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f;
            x = (x + (x >> 8)) & 0x00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff;
            // 16-bit lanes now hold the counts; their sum (at most 256) fits the top lane.
            n = (x * 0x0001000100010001000100010001000100010001000100010001000100010001) >> 240;
        }
    }

    function _checkOpen(State memory s, uint256 round) private pure {
        if (s.round == 0) revert NotStarted();
        if (s.finished) revert FederationFinished();
        if (round != s.round) revert WrongRound(round, s.round);
    }

    function _checkExamples(uint256 numExamples) private pure {
        if (numExamples == 0) revert NoExamples();
        if (numExamples > MAX_EXAMPLES) revert TooManyExamples(numExamples, MAX_EXAMPLES);
    }

    function _checkCid(bytes calldata cid) private pure {
        if (cid.length == 0) revert EmptyCid();
        if (cid.length > MAX_CID_LENGTH) revert CidTooLong(cid.length, MAX_CID_LENGTH);
    }

    function _pack(bytes calldata cid) private pure returns (PackedCid memory p) {
        bytes memory buf = abi.encodePacked(uint8(cid.length), cid, new bytes(63 - cid.length));
        bytes32 a;
        bytes32 b;
        assembly {
            a := mload(add(buf, 32))
            b := mload(add(buf, 64))
        }
        p.a = a;
        p.b = b;
    }

    function _unpack(PackedCid storage p) private view returns (bytes memory out) {
        bytes32 a = p.a;
        uint256 len = uint8(a[0]);
        out = new bytes(len);
        bytes memory buf = abi.encodePacked(a, p.b);
        for (uint256 i = 0; i < len; ++i) {
            out[i] = buf[i + 1];
        }
    }
}
