// Safe file helpers: a read-only memory map and an atomic "write to temp, fsync, rename" writer.
//
// Both are thin wrappers over POSIX calls. The standard library has no memory mapping, and its
// streams give no access to the file descriptor, so they cannot fsync; that is why these are
// hand-written rather than taken from a library.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <functional>
#include <ostream>
#include <span>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <utility>
#include <vector>

namespace gemma3 {

// Any failure of an operating-system call on a file. The message names the path and the reason.
class FileError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {

inline std::string quoted_path(const std::filesystem::path& path) {
    std::string text(1, '\'');
    text += path.string();
    text += '\'';
    return text;
}

[[noreturn]] inline void throw_file_error(const std::string& what, const std::filesystem::path& path,
                                          int error_number) {
    throw FileError(what + " " + quoted_path(path) + ": " + std::strerror(error_number));
}

// Closes a descriptor, retrying nothing: on Linux the descriptor is released even when close()
// reports EINTR, so a retry could close somebody else's descriptor.
inline int close_descriptor(int fd) { return ::close(fd); }

}  // namespace detail

// A whole file mapped read-only into memory. The bytes stay valid while the object lives.
// An empty file gives an empty span (mmap refuses length 0). If another process truncates the file
// while it is mapped, touching the lost pages raises SIGBUS; files we map are not expected to change.
class MappedFile {
public:
    explicit MappedFile(std::filesystem::path path) : path_(std::move(path)) {
        int fd;
        do {
            fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
        } while (fd < 0 && errno == EINTR);
        if (fd < 0) detail::throw_file_error("cannot open", path_, errno);

        struct stat status {};
        if (::fstat(fd, &status) != 0) {
            const int error_number = errno;
            detail::close_descriptor(fd);
            detail::throw_file_error("cannot stat", path_, error_number);
        }
        if (!S_ISREG(status.st_mode)) {
            detail::close_descriptor(fd);
            throw FileError("cannot map " + detail::quoted_path(path_) + ": not a regular file");
        }
        size_ = static_cast<std::size_t>(status.st_size);
        if (size_ > 0) {
            void* address = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
            if (address == MAP_FAILED) {
                const int error_number = errno;
                detail::close_descriptor(fd);
                detail::throw_file_error("cannot mmap", path_, error_number);
            }
            data_ = static_cast<const std::byte*>(address);
        }
        // The mapping keeps its own reference to the file; the descriptor is no longer needed.
        detail::close_descriptor(fd);
    }

    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    MappedFile(MappedFile&& other) noexcept
        : path_(std::move(other.path_)),
          data_(std::exchange(other.data_, nullptr)),
          size_(std::exchange(other.size_, 0)) {}

    MappedFile& operator=(MappedFile&& other) noexcept {
        if (this != &other) {
            unmap();
            path_ = std::move(other.path_);
            data_ = std::exchange(other.data_, nullptr);
            size_ = std::exchange(other.size_, 0);
        }
        return *this;
    }

    ~MappedFile() { unmap(); }

    std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
    const std::filesystem::path& path() const noexcept { return path_; }

private:
    void unmap() noexcept {
        if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
        data_ = nullptr;
        size_ = 0;
    }

    std::filesystem::path path_;
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
};

namespace detail {

// A minimal output stream buffer over a POSIX descriptor, so that the caller can fsync the very
// descriptor the data went through. Write errors make the stream bad (overflow/sync return eof/-1)
// and are also remembered in `error_number` for the message.
class DescriptorStreamBuffer : public std::streambuf {
public:
    explicit DescriptorStreamBuffer(int fd) : fd_(fd), buffer_(1 << 16) {
        setp(buffer_.data(), buffer_.data() + buffer_.size());
    }
    DescriptorStreamBuffer(const DescriptorStreamBuffer&) = delete;
    DescriptorStreamBuffer& operator=(const DescriptorStreamBuffer&) = delete;

    int error_number() const noexcept { return error_number_; }

protected:
    int_type overflow(int_type ch) override {
        if (!flush_buffer()) return traits_type::eof();
        if (!traits_type::eq_int_type(ch, traits_type::eof())) {
            *pptr() = traits_type::to_char_type(ch);
            pbump(1);
        }
        return traits_type::not_eof(ch);
    }

    int sync() override { return flush_buffer() ? 0 : -1; }

    std::streamsize xsputn(const char* data, std::streamsize count) override {
        // Large writes bypass the buffer.
        if (count >= static_cast<std::streamsize>(buffer_.size())) {
            if (!flush_buffer() || !write_all(data, static_cast<std::size_t>(count))) return 0;
            return count;
        }
        return std::streambuf::xsputn(data, count);
    }

private:
    bool flush_buffer() {
        const auto pending = static_cast<std::size_t>(pptr() - pbase());
        if (pending == 0) return error_number_ == 0;
        const bool ok = write_all(pbase(), pending);
        setp(buffer_.data(), buffer_.data() + buffer_.size());
        return ok;
    }

    bool write_all(const char* data, std::size_t count) {
        if (error_number_ != 0) return false;
        while (count > 0) {
            const ::ssize_t written = ::write(fd_, data, count);
            if (written < 0) {
                if (errno == EINTR) continue;
                error_number_ = errno;
                return false;
            }
            data += written;
            count -= static_cast<std::size_t>(written);
        }
        return true;
    }

    int fd_;
    std::vector<char> buffer_;
    int error_number_ = 0;
};

inline std::filesystem::path directory_of(const std::filesystem::path& path) {
    const auto parent = path.parent_path();
    return parent.empty() ? std::filesystem::path(".") : parent;
}

inline void fsync_directory(const std::filesystem::path& directory) {
    int fd;
    do {
        fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) throw_file_error("cannot open directory", directory, errno);
    if (::fsync(fd) != 0) {
        const int error_number = errno;
        close_descriptor(fd);
        throw_file_error("cannot fsync directory", directory, error_number);
    }
    close_descriptor(fd);
}

}  // namespace detail

// Replaces the file at `path` with what `write` puts into the stream, such that a crash or a kill
// at any moment leaves either the old file or the complete new one, never a mix:
//   1. write into a new temporary file in the same directory (same file system, so rename is atomic),
//   2. check the stream, flush, fsync the file, close it,
//   3. rename it over `path`, and fsync the directory so the rename itself is durable.
// If `write` throws, or any step fails, the temporary is removed, `path` is untouched, and the
// exception propagates (system failures as FileError naming the file and the reason).
// The new file gets mode 0666 minus the umask, like a file created by std::ofstream.
inline void write_file_atomically(const std::filesystem::path& path,
                                  const std::function<void(std::ostream&)>& write) {
    if (path.filename().empty()) throw FileError("cannot write " + detail::quoted_path(path) + ": not a file name");
    const std::filesystem::path directory = detail::directory_of(path);

    // A unique name: pid for other processes, a counter for other calls in this one; O_EXCL makes
    // sure we never adopt a file that already exists.
    static std::atomic<unsigned long> counter{0};
    std::filesystem::path temporary;
    int fd = -1;
    for (int attempt = 0; fd < 0; ++attempt) {
        std::string name = path.filename().string();
        name.insert(0, 1, '.');
        name += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1));
        temporary = directory / name;
        fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EINTR && (errno != EEXIST || attempt >= 100))
            detail::throw_file_error("cannot create temporary file", temporary, errno);
    }

    // Owns the temporary until the rename succeeds.
    struct TemporaryGuard {
        std::filesystem::path path;
        int fd;
        bool keep = false;
        ~TemporaryGuard() {
            if (fd >= 0) detail::close_descriptor(fd);
            if (!keep) ::unlink(path.c_str());
        }
    } guard{temporary, fd};

    {
        detail::DescriptorStreamBuffer buffer(fd);
        std::ostream stream(&buffer);
        write(stream);
        stream.flush();
        if (!stream) {
            const int error_number = buffer.error_number();
            if (error_number != 0) detail::throw_file_error("cannot write", temporary, error_number);
            throw FileError("cannot write " + detail::quoted_path(path) + ": the output stream failed");
        }
    }
    if (::fsync(fd) != 0) detail::throw_file_error("cannot fsync", temporary, errno);
    guard.fd = -1;
    // A failing close can report a delayed write error (e.g. NFS); the data would not be safe.
    if (detail::close_descriptor(fd) != 0 && errno != EINTR) detail::throw_file_error("cannot close", temporary, errno);

    if (::rename(temporary.c_str(), path.c_str()) != 0) {
        const int error_number = errno;
        detail::throw_file_error("cannot rename " + detail::quoted_path(temporary) + " to", path, error_number);
    }
    guard.keep = true;
    detail::fsync_directory(directory);
}

}  // namespace gemma3
